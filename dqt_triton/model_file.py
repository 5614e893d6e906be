"""The checkpoint format of `DQTModel` and `FrozenDQTModel` files (docs/checkpoints.md).

`checkpoint.py` is the file layer (integrity digest, atomic write, weights-only loading); this
module is what the files hold. A DQTModel file: ``format``, ``version``, ``config`` (the
converted architecture), ``steps``, ``state_dict``, ``programs`` (the frozen integer programs of
the saved static widths and, with a controller, dynamic mode), ``static_bits``, ``dynamic``,
``budget_code`` and optionally ``policies`` and ``allowed_bits`` (the widths a controller may
pick at deployment; absent: all). A FrozenDQTModel file: ``frozen`` (one program),
``macs``, ``controller_macs``. Programs are stored as nested dicts (`IntegerProgram.to_dict`).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Union

from . import checkpoint
from .errors import CheckpointError
from .program import IntegerProgram

PathLike = Union[str, os.PathLike]
FORMAT = "dqt-triton-checkpoint"
FORMAT_VERSION = 3  # 2: per-width batch norm, governed layers, budget codes; 3: signed prices, 256 codes


def write(payload: dict, path: PathLike) -> None:
    """Write with an integrity digest to a temporary file and rename (`checkpoint.save_file`)."""
    checkpoint.save_file(payload, path)


def read(path: PathLike, map_location="cpu") -> dict:
    """A model file's payload, after checking its format tag and version."""
    path = os.fspath(path)
    payload = checkpoint.load_file(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dqt-triton model checkpoint (format tag missing)")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this dqt-triton reads "
                              f"{FORMAT_VERSION}")
    return payload


class SavedModel(NamedTuple):
    """What a DQTModel file holds, beside the format tag."""

    config: dict
    steps: list[dict]
    state_dict: dict
    programs: dict[str, IntegerProgram]
    static_bits: dict[str, tuple[int, int]]
    dynamic: bool
    budget_code: int
    policies: Optional[dict]
    allowed_bits: Optional[list[int]] = None


def save_model(path: PathLike, saved: SavedModel) -> None:
    """Write a DQTModel file (programs on the CPU, as dicts)."""
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "config": saved.config, "steps": saved.steps,
               "state_dict": saved.state_dict, "programs": {k: p.to_dict() for k, p in saved.programs.items()},
               "static_bits": {n: list(b) for n, b in saved.static_bits.items()}, "dynamic": saved.dynamic,
               "budget_code": saved.budget_code}
    if saved.policies is not None:
        payload["policies"] = saved.policies
    if saved.allowed_bits is not None:
        payload["allowed_bits"] = [int(b) for b in saved.allowed_bits]
    write(payload, path)


def load_model(path: PathLike, map_location="cpu") -> SavedModel:
    """Read a DQTModel file (its programs are left as stored: `load_frozen` reads those)."""
    payload = read(path, map_location)
    try:
        return SavedModel(payload["config"], payload["steps"], payload["state_dict"], {},
                          {n: tuple(b) for n, b in payload["static_bits"].items()}, bool(payload["dynamic"]),
                          payload["budget_code"], payload.get("policies"),  # both absent in older files
                          payload.get("allowed_bits"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{os.fspath(path)} is not a valid DQTModel checkpoint: {exc}") from exc


def save_frozen(path: PathLike, program: IntegerProgram, macs: dict, controller_macs: int) -> None:
    """Write a FrozenDQTModel file."""
    write({"format": FORMAT, "version": FORMAT_VERSION, "frozen": program.to_dict(), "macs": macs,
           "controller_macs": controller_macs}, path)


def load_frozen(path: PathLike, mode: Optional[str] = None) -> tuple[IntegerProgram, dict, int]:
    """(program, MACs per layer, MACs at 8 x 8 bits outside the layers: the controller's and
    attention's products) of a frozen file, or of the frozen `mode`
    ("static" or "dynamic"; default: the mode it was saved in) of a DQTModel file."""
    payload = read(path, "cpu")
    try:
        if "frozen" in payload:
            return IntegerProgram.from_dict(payload["frozen"]), payload["macs"], payload["controller_macs"]
        chosen = mode or ("dynamic" if payload["dynamic"] else "static")
        program = payload["programs"][chosen]
        config = payload["config"]
        fixed_macs = config.get("product_macs", 0)  # attention's products, at 8 x 8 bits
        if chosen == "dynamic" and config["controller"] is not None:
            tokens = config["controller"]["feature_shape"][0] if config["controller"].get("per_token") else 1
            fixed_macs += tokens * sum(program["controller"][k]["weight"].numel() for k in ("fc1", "fc2"))
        return IntegerProgram.from_dict(program), config["macs"], fixed_macs
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{os.fspath(path)} has no frozen program {mode!r}: {exc}") from exc


__all__ = ["FORMAT", "FORMAT_VERSION", "SavedModel", "save_model", "load_model", "save_frozen", "load_frozen",
           "write", "read"]
