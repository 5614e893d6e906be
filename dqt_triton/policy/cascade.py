"""Cascades of static per-layer allocations and their integer runtime.

A `Cascade` runs every input at its first allocation; while an input's top-1 margin (the
difference of its two largest logits) is below a stage's threshold it runs again at the next,
dearer allocation, resuming from the values the two programs compute identically (nested codes
make this exact), and both passes count in its BitOPs. One stage is a static allocation.
`FrozenCascade` runs a cascade on frozen integer programs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

Allocation = tuple  # the governed layers' widths, in `DQTModel.governed` order


GATE_FEATURES = ("margin", "max_probability", "entropy")


@dataclass(frozen=True)
class Cascade:
    """Stages of allocations with thresholds: an input runs at `stages[0]`; while its score at
    stage i is below `thresholds[i]` it runs again at stage i + 1. The score is the top-1
    margin, or with `gates[i]` a logistic gate on the stage's logits (`stage_score`). One stage
    is a static allocation."""

    stages: tuple
    thresholds: tuple = ()
    gates: Optional[tuple] = None  # per transition: None (the margin) or the gate's weights (`stage_score`)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a cascade needs at least one stage")
        if len(self.thresholds) != len(self.stages) - 1:
            raise ValueError(f"a cascade of {len(self.stages)} stages needs {len(self.stages) - 1} thresholds, "
                             f"got {len(self.thresholds)}")
        widths = {len(s) for s in self.stages}
        if len(widths) != 1:
            raise ValueError(f"every stage needs one width per governed layer, got lengths {sorted(widths)}")
        if self.gates is not None and (len(self.gates) != len(self.thresholds) or any(
                g is not None and len(g) != len(GATE_FEATURES) + 1 for g in self.gates)):
            raise ValueError(f"gates: one per threshold, each None or {len(GATE_FEATURES) + 1} weights "
                             f"({', '.join(GATE_FEATURES)}, bias), got {self.gates}")

    def gate(self, i: int) -> Optional[tuple]:
        return None if self.gates is None else self.gates[i]

    def to_dict(self) -> dict:
        d = {"stages": [list(s) for s in self.stages], "thresholds": [float(t) for t in self.thresholds]}
        if self.gates is not None:
            d["gates"] = [None if g is None else [float(w) for w in g] for g in self.gates]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Cascade":
        gates = d.get("gates")
        return cls(tuple(tuple(int(b) for b in s) for s in d["stages"]), tuple(float(t) for t in d["thresholds"]),
                   None if gates is None else tuple(None if g is None else tuple(float(w) for w in g) for g in gates))

    def describe(self) -> str:
        parts = ["/".join(map(str, self.stages[0]))]
        for i, (s, t) in enumerate(zip(self.stages[1:], self.thresholds)):
            parts.append(f"{'gate' if self.gate(i) else 'margin'} < {t:.3g} -> {'/'.join(map(str, s))}")
        return ", ".join(parts)


def top1_margin(logits: Tensor) -> Tensor:
    """Largest minus second-largest logit per row (float32, as the logits)."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def gate_features(logits: Tensor) -> Tensor:
    """[N, 3] float64 on the CPU: the top-1 margin, the largest softmax probability and the
    softmax entropy of each row (computed on the host so that every backend's logits, which are
    the same integers dequantized, give the same scores)."""
    z = logits.detach().cpu().double()
    p = z.softmax(1)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(1)
    return torch.stack([top1_margin(z), p.max(1).values, entropy], 1)


def stage_score(logits: Tensor, gate: Optional[tuple]) -> Tensor:
    """What a cascade's threshold compares: the top-1 margin, or with a gate (weights of
    `GATE_FEATURES` and a bias) minus its log-odds that this stage's answer is wrong, so that
    in both a low score means unsure."""
    if gate is None:
        return top1_margin(logits)
    w = torch.tensor(gate, dtype=torch.float64)
    return -(gate_features(logits) @ w[:-1] + w[-1])


def allocation_bits(model, alloc: Allocation) -> dict:
    """`set_bits` argument for an allocation: governed layers at its widths, edges at `edge_bits`."""
    edge = model.edge_bits
    widths = dict(zip(model.governed, alloc))
    return {n: widths[n] if n in widths else (edge if edge is not None else 8) for n in model.layer_names}


def allocation_bitops(model, alloc: Allocation) -> float:
    """BitOPs of one sample at an allocation (weights and activations at the same width)."""
    macs, bits = model.arch.macs, allocation_bits(model, alloc)
    return float(sum(macs[n] * bits[n] * bits[n] for n in model.layer_names))


def uniform(model, bits: int) -> Allocation:
    return (bits,) * len(model.governed)


def reusable_values(steps: Sequence[dict], bits_a: dict, bits_b: dict) -> set:
    """Value indices (0 the input, i + 1 step i's output) that two static programs of one model
    compute identically: the input, and every step whose inputs are reusable and which is not a
    layer at different widths (only a layer step reads widths). Nested codes make this exact:
    a dearer pass resumes from a cheaper pass's codes without any conversion."""
    same = {0}
    for i, step in enumerate(steps):
        if all(j in same for j in step.inputs) and (
                step.kind != "layer" or tuple(bits_a[step.name]) == tuple(bits_b[step.name])):
            same.add(i + 1)
    return same


def escalation_bitops(model, cheap: Allocation, dear: Allocation) -> float:
    """BitOPs a pass at `dear` adds for an input already run at `cheap`: the layers it cannot
    take from the cheap pass (`reusable_values`)."""
    return suffix_bitops(model.steps, model.arch.macs, allocation_bits(model, cheap),
                         allocation_bits(model, dear))


def suffix_bitops(steps: Sequence[dict], macs: dict, cheap_bits: dict, dear_bits: dict) -> float:
    """BitOPs of the layers of a `dear_bits` pass that a `cheap_bits` pass has not computed."""
    same = reusable_values(steps, _pairs(cheap_bits), _pairs(dear_bits))
    return float(sum(macs[s.name] * dear_bits[s.name] ** 2 for i, s in enumerate(steps)
                     if s.kind == "layer" and i + 1 not in same))


def _pairs(bits: dict) -> dict:
    return {n: (b, b) for n, b in bits.items()}


def run_cascade(run: Callable, cascade: Cascade, x: Tensor, steps: Sequence[dict], bits: Callable[[Allocation], dict],
                cost: Callable[[Allocation], float],
                escalation_cost: Callable[[Allocation, Allocation], float]) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, BitOPs per input, final stage index per input) of a cascade.

    `run(alloc, x, given)` -> (logits, values) runs the static program of an allocation,
    taking the values in `given` as computed. Stage i runs on the inputs still unsure after
    stage i - 1 and resumes from that stage's values it would compute identically; an input
    keeps the logits of its last stage."""
    logits, values = run(cascade.stages[0], x, None)
    spent = torch.full((len(x),), cost(cascade.stages[0]), dtype=torch.float64)
    stage = torch.zeros(len(x), dtype=torch.long)
    active = torch.arange(len(x))
    current, prev = logits, cascade.stages[0]
    for i, (alloc, threshold) in enumerate(zip(cascade.stages[1:], cascade.thresholds), start=1):
        unsure = (stage_score(current, cascade.gate(i - 1)) < threshold).cpu()
        if not bool(unsure.any()):
            break
        rows = torch.nonzero(unsure).flatten()
        same = reusable_values(steps, _pairs(bits(prev)), _pairs(bits(alloc)))
        given = {j: values[j][rows.to(values[j].device)] for j in same if j > 0}
        active = active[unsure]
        current, values = run(alloc, x[active.to(x.device)], given)
        logits = logits.clone()
        logits[active.to(logits.device)] = current
        spent[active] += escalation_cost(prev, alloc)
        stage[active] = i
        prev = alloc
    return logits, spent, stage



class FrozenCascade(nn.Module):
    """A cascade on frozen integer programs (one `FrozenDQTModel` per distinct allocation):
    the integer runtime of the escalation mode, with no float weights and no reference to the
    trainable model. A later stage resumes from the values of the earlier one that it would
    compute identically (`reusable_values`). After each call `last_bitops` holds the BitOPs
    per input and `last_stage` the stage each input ended at."""

    def __init__(self, cascade: Cascade, programs: dict, macs: dict) -> None:
        super().__init__()
        self.cascade = cascade
        self.programs = nn.ModuleDict({_key(a): p for a, p in programs.items()})
        self.macs = dict(macs)
        self.last_bitops: Optional[Tensor] = None
        self.last_stage: Optional[Tensor] = None

    @classmethod
    def from_model(cls, model, cascade: Cascade) -> "FrozenCascade":
        programs = {}
        with model.kept_mode():
            for alloc in dict.fromkeys(cascade.stages):
                model.set_bits(allocation_bits(model, alloc))
                programs[alloc] = model.freeze()
        return cls(cascade, programs, model.arch.macs)

    def _bits(self, alloc: Allocation) -> dict:
        return {n: b[0] for n, b in self.programs[_key(alloc)].program.static_bits.items()}

    def _steps(self) -> list:
        return self.programs[_key(self.cascade.stages[0])].program.steps

    def _cost(self, alloc: Allocation) -> float:
        return float(sum(self.macs[n] * b * b for n, b in self._bits(alloc).items()))

    def _escalation_cost(self, cheap: Allocation, dear: Allocation) -> float:
        return suffix_bitops(self._steps(), self.macs, self._bits(cheap), self._bits(dear))

    def forward(self, x: Tensor) -> Tensor:
        logits, spent, stage = run_cascade(lambda a, xb, given: self.programs[_key(a)].run_values(xb, given),
                                           self.cascade, x, self._steps(), self._bits, self._cost,
                                           self._escalation_cost)
        self.last_bitops, self.last_stage = spent, stage
        return logits


def _key(alloc: Allocation) -> str:
    return "w" + "_".join(map(str, alloc))

