"""Checkpoint files: an integrity-checked container around `torch.save`, written atomically.

Layout: the 16-byte magic ``b"DQT-CKPT\\x00v1\\n\\x00\\x00\\x00\\x00"`` (whose last four bytes are
reserved zeros), the 32-byte SHA-256 of the body, then the body: the payload as `torch.save`
writes it. Load reads the whole file, checks the magic and the digest before anything is
unpickled, and only then loads the body with ``weights_only=True``. A single changed byte
anywhere in the file is refused: in the magic ("not a dqt-triton checkpoint" or "damaged"), in
the digest or the body ("damaged"). Files written before the container existed (a bare torch
zip) still load, with a warning that they carry no digest.

Saves go to ``<path>.tmp-<pid>`` and are renamed over `path` only once complete, so the file a
user had stays intact when a save fails; a failed save removes its temporary file, and
temporary files left by killed processes are removed by the next save to the same path.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import logging
import os
import pickle
import zipfile
from typing import Any, Union

import torch

from .errors import CheckpointError, DiskFullError

log = logging.getLogger(__name__)

MAGIC = b"DQT-CKPT\x00v1\n\x00\x00\x00\x00"
_DIGEST_BYTES = 32
_HEADER = len(MAGIC) + _DIGEST_BYTES


def encode(payload: Any) -> bytes:
    """The file's bytes for `payload`: magic, SHA-256 of the body, body."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    return MAGIC + hashlib.sha256(body).digest() + body


def decode(data: bytes, name: str, map_location=None) -> Any:
    """Verify and load bytes written by `encode` (or a legacy bare torch zip)."""
    if data[:len(MAGIC)] == MAGIC:
        digest, body = data[len(MAGIC):_HEADER], data[_HEADER:]
        if len(digest) < _DIGEST_BYTES or hashlib.sha256(body).digest() != digest:
            raise CheckpointError(f"{name} is damaged (its SHA-256 digest does not match its contents: truncated "
                                  f"or altered since it was saved); restore it from a good copy or retrain")
    elif data[:4] == b"PK\x03\x04":
        log.warning("%s has no integrity digest (written before dqt-triton checkpoints carried one): it is loaded "
                    "unverified; save it again to add one", name)
        body = data
    elif sum(a == b for a, b in zip(data[:len(MAGIC)], MAGIC)) >= len(MAGIC) - 2:
        raise CheckpointError(f"{name} is damaged (its dqt-triton header is altered); restore it from a good copy")
    else:
        raise CheckpointError(f"{name} is not a dqt-triton checkpoint (no dqt-triton header)")
    try:
        return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
            TypeError, AttributeError, ImportError, IndexError) as exc:
        # Never pass on torch's advice to retry with weights_only=False: the file is what is wrong.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{name} is damaged or not a dqt-triton checkpoint: its contents cannot be read "
                              f"({first_line[:200]})") from None


def load_file(path: Union[str, os.PathLike], map_location=None) -> Any:
    """Read, verify and load a checkpoint file (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    with open(path, "rb") as f:
        data = f.read()
    return decode(data, path, map_location)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Union[str, os.PathLike]) -> list[str]:
    """Remove ``<path>.tmp-<pid>`` files whose writing process is gone; returns what was removed."""
    path = os.fspath(path)
    removed = []
    for tmp in glob.glob(glob.escape(path) + ".tmp-*"):
        suffix = tmp[len(path) + len(".tmp-"):]
        if not suffix.isdigit() or _pid_alive(int(suffix)):
            continue
        try:
            os.remove(tmp)
            removed.append(tmp)
            log.info("removed %s, left by an interrupted save", tmp)
        except OSError:
            pass
    return removed


def save_file(payload: Any, path: Union[str, os.PathLike]) -> None:
    """Write `payload` to `path` atomically, with its digest (see the module docstring).

    Raises DiskFullError (an OSError) naming the directory when the disk is full; the previous
    file at `path`, if any, is untouched and the temporary file is removed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    data = encode(payload)
    remove_stale_temporaries(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(exc.errno, f"no space left on {directory}: could not write {path} "
                                f"({len(data):,} bytes); the previous file, if any, is unchanged") from None
        raise


__all__ = ["save_file", "load_file", "encode", "decode", "remove_stale_temporaries", "MAGIC"]
