"""Reading compiled PTX: what `dqt_triton.kernels.aot` checks in every specialization.

- `int8_mma`: the int8 tensor-core instruction, wgmma s8 (sm_90) or mma.sync s8.
- `kloop_instructions`: the PTX instructions of the innermost loop that issues an MMA.
- `register_a_wgmma`: `wgmma.mma_async` with its left operand (A) in registers. With A in
  shared memory the operand after the accumulator's brace list is a descriptor (a 64-bit
  register), with A in registers it is a brace list of registers, the form that meets a ptxas
  hazard (triton#9433) and the one the kernels avoid by shifting activations before the loop.
- `global_accesses`: every global access, classified. A global access is an `ld.global`,
  `st.global`, `atom.global`, `red.global`, a `cp.async` from global memory, or an `ld`/`st`
  with a generic address. It is per-lane when its address depends on the thread index: the
  address registers are traced back through the PTX (an instruction that writes a register
  from %tid, %laneid, %warpid or an already per-lane register, or under a per-lane predicate,
  makes it per-lane; a fixed point over the whole kernel, so loop-carried values count). A
  per-lane access is guarded by a predicate (`@%p` / `@!%p`, not one only ever set to a
  constant) or, for `cp.async`, by a src-size register (masked lanes copy 0 bytes and
  zero-fill). Every tile access of the kernels is masked, so an unguarded per-lane access is a
  load or store no mask keeps in bounds. The rest are scalar, one address for every thread. A
  per-lane access whose guard is the same in every thread (`GlobalAccess.uniform_guard`) is
  what an unmasked tile in a pipelined loop gets (the pipeliner's "this K step exists").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Optional


def int8_mma(ptx: str) -> Optional[str]:
    """"wgmma s8" or "mma.sync s8": the int8 tensor-core MMA the PTX issues, None without one."""
    if re.search(r"wgmma\.mma_async[\w.]*\.s32\.s8\.s8", ptx):
        return "wgmma s8"
    if re.search(r"mma\.sync[\w.]*\.s32\.s8\.s8", ptx):
        return "mma.sync s8"
    return None


@dataclass(frozen=True)
class GlobalAccess:
    """One global-memory instruction of the PTX."""

    line: int
    text: str
    per_lane: bool  # its address depends on the thread index
    guarded: bool  # under a predicate that is not a constant, or a cp.async with a src-size register
    is_load: bool
    uniform_guard: bool = False  # per lane, but its guard is the same in every thread (see `global_accesses`)


_STATEMENT = re.compile(r"^(?:@(!?)(%[\w.]+)\s+)?([a-z][\w.:]*)\s*(.*)$")
_REGISTER = re.compile(r"%[a-zA-Z_][\w]*(?:\.[xyz])?")
_LANE_SOURCES = ("%tid.x", "%tid.y", "%tid.z", "%laneid", "%warpid")
_GLOBAL_OPS = re.compile(r"^(?:ld|st|atom|red)(?:\.[\w:]+)*\.global\b|^cp\.async\.(?!bulk)[\w.:]*\.global\b")
_STATE_SPACES = (".global", ".shared", ".param", ".local", ".const")
_NO_DESTINATION = ("st.", "cp.async", "bar.", "bra", "ret", "red.", "prefetch", "fence", "wgmma.fence",
                   "wgmma.commit", "wgmma.wait", "cp.async.commit", "cp.async.wait", "membar", "trap", "exit",
                   "mbarrier.init", "mbarrier.arrive", "mbarrier.try_wait")


def _is_global_access(opcode: str) -> bool:
    """A global-memory instruction, or a generic-address one (no state space: it may be global)."""
    if _GLOBAL_OPS.match(opcode):
        return True
    return opcode.startswith(("ld.", "st.", "atom.", "red.")) and not any(space in opcode for space in _STATE_SPACES)


def _statements(ptx: str) -> list[tuple[int, str]]:
    """(line number, statement) of every PTX instruction: comments stripped, several
    statements on a line split, scope braces, labels and directives dropped (no instruction
    starts with a brace; operand lists do)."""
    out = []
    for number, line in enumerate(ptx.splitlines(), 1):
        for part in line.split("//", 1)[0].split(";"):
            part = re.sub(r"^[{}\s]+", "", part)
            if part and not part.startswith((".", "$")) and not part.endswith(":"):
                out.append((number, part))
    return out


def _split_operands(rest: str) -> list[str]:
    """Operands at the top level (commas inside braces and brackets do not split)."""
    operands, depth, current = [], 0, ""
    for ch in rest:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            operands.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        operands.append(current.strip())
    return operands


def _instructions(statements: list[tuple[int, str]]) -> Iterator[tuple[int, str, Optional[str], str, str, list]]:
    """(line number, statement, guard predicate, opcode, operand text, top-level operands) of
    every statement that parses as an instruction."""
    for number, text in statements:
        m = _STATEMENT.match(text)
        if m:
            _, guard, opcode, rest = m.groups()
            yield number, text, guard, opcode, rest, _split_operands(rest)


def _per_lane_registers(statements: list[tuple[int, str]]) -> set:
    """Registers whose value may differ between the threads of a block: written from %tid,
    %laneid or %warpid, from a per-lane register, or under a per-lane predicate (a
    flow-insensitive fixed point over every instruction, so loop-carried values are covered)."""
    writes = []  # (destinations, sources)
    for _, _, guard, opcode, rest, operands in _instructions(statements):
        if opcode.startswith(_NO_DESTINATION) or not operands:
            continue
        if opcode.startswith("wgmma.mma_async"):
            destinations = set(_REGISTER.findall(operands[0]))
            sources = set(_REGISTER.findall(rest))
        else:
            destinations = set(_REGISTER.findall(operands[0]))
            sources = set(_REGISTER.findall(",".join(operands[1:])))
        if guard:
            sources.add(guard)
        if destinations:
            writes.append((destinations, sources))
    lane = set(_LANE_SOURCES)
    changed = True
    while changed:
        changed = False
        for destinations, sources in writes:
            if sources & lane and not destinations <= lane:
                lane |= destinations
                changed = True
    return lane


def _constant_true_predicates(statements: list[tuple[int, str]]) -> set:
    """Predicates only ever set to true (`mov.pred %p, -1` or 1): no guard at all."""
    constant, other = set(), set()
    for _, _, guard, opcode, _, operands in _instructions(statements):
        if not operands:
            continue
        for reg in _REGISTER.findall(operands[0]):
            if reg.startswith("%p"):
                if opcode == "mov.pred" and not guard and len(operands) == 2 and operands[1] in ("-1", "1"):
                    constant.add(reg)
                else:
                    other.add(reg)
    return constant - other


def global_accesses(ptx: str) -> list[GlobalAccess]:
    """Every global load, store, atomic and async copy of the PTX, classified (module docstring).

    `uniform_guard` marks a per-lane access whose guard does not depend on the thread: the
    pipeliner's "this K step exists" alone guards an unmasked tile that way, but so does a mask
    LLVM has proved lane-independent (with M = 1, `rows < 1` on a 16-row tile's second half
    is `pid_m * 16 < 0`); `aot.problems` tells the two apart (`aot.size_one_masks`)."""
    statements = _statements(ptx)
    lane = _per_lane_registers(statements)
    always = _constant_true_predicates(statements)
    found = []
    for number, text, guard, opcode, _, operands in _instructions(statements):
        if not _is_global_access(opcode):
            continue
        addresses = [op for op in operands if op.startswith("[")]
        predicate = guard if guard and guard not in always else None
        if opcode.startswith("cp.async"):
            address = addresses[1] if len(addresses) > 1 else ""
            src_size = operands[3] if len(operands) >= 4 and _REGISTER.fullmatch(operands[3]) else None
        else:
            address = addresses[0] if addresses else ""
            src_size = None
        per_lane = bool(set(_REGISTER.findall(address)) & lane)
        guarded = predicate is not None or src_size is not None
        lane_guarded = predicate in lane or src_size in lane
        found.append(GlobalAccess(number, text, per_lane, guarded, opcode.startswith(("ld.", "cp.async")),
                                  per_lane and guarded and not lane_guarded))
    return found


_WGMMA = re.compile(r"\bwgmma\.mma_async[\w.]*\s+(.*)")


def register_a_wgmma(ptx: str) -> list[str]:
    """The `wgmma.mma_async` instructions whose A operand is a brace list of registers (A from
    registers); with A from shared memory it is a descriptor register (module docstring)."""
    found = []
    for line in ptx.splitlines():
        m = _WGMMA.search(line.split("//", 1)[0])
        if m is None:
            continue
        operands = _split_operands(m.group(1).rstrip().rstrip(";"))
        if len(operands) < 3:
            raise ValueError(f"cannot read the operands of: {line.strip()}")
        if operands[1].startswith("{"):
            found.append(line.strip())
    return found


_MMA = re.compile(r"\b(wgmma\.mma_async|mma\.sync)")


def kloop_instructions(ptx: str) -> Optional[int]:
    """PTX instructions in the innermost loop that issues an MMA (from its label to the branch
    back to it), or None without one. Labels, directives and braces are not instructions."""
    lines = [line.strip() for line in ptx.splitlines()]
    labels = ((re.match(r"(\$[\w.]+):", line), i) for i, line in enumerate(lines))
    label_at = {m.group(1): i for m, i in labels if m}
    best = None
    for i, line in enumerate(lines):
        target = re.search(r"\bbra(?:\.uni)?\s+(\$[\w.]+);", line)
        start = label_at.get(target.group(1)) if target else None
        if start is None or start >= i or not any(_MMA.search(body) for body in lines[start:i]):
            continue
        count = sum(1 for body in lines[start + 1:i + 1]
                    if body and not body.startswith(("$", ".", "//", "{", "}")))
        best = count if best is None else min(best, count)
    return best
