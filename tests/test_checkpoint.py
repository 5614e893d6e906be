"""Checkpoint files: damaged files are refused with a clear message, saves are atomic, a full
disk says so and leaves nothing behind."""

from __future__ import annotations

import fractions
import hashlib
import io
import logging
import os
import random
import subprocess
import sys

import pytest
import torch

import dqt_triton as dq
from dqt_triton import checkpoint, models


def small_model() -> dq.DQTModel:
    torch.manual_seed(0)
    model = dq.DQTModel.from_float(models.mlp(16, 8, 10, depth=2), (16,), candidate_bits=(2, 4, 8), dynamic=True)
    model.eval()
    return model


def probe() -> torch.Tensor:
    return torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(1)).to(torch.uint8)


def test_every_single_flipped_byte_is_refused(tmp_path):
    """Flip one byte at positions sampled over the whole file (header, digest, zip headers,
    pickle, tensor data, central directory): every load is refused, none loads other values."""
    model = small_model()
    good = tmp_path / "good.pt"
    model.save(good)
    data = good.read_bytes()
    rng = random.Random(0)
    positions = sorted(set(range(0, 64)) | set(range(len(data) - 64, len(data)))
                       | set(rng.sample(range(len(data)), 300)))
    bad = tmp_path / "bad.pt"
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        with pytest.raises(dq.CheckpointError) as info:
            dq.DQTModel.load(bad)
        message = str(info.value)
        assert "damaged" in message or "not a dqt-triton checkpoint" in message, (pos, message)
        assert "weights_only=False" not in message
    # The intact file still loads, with the same outputs.
    assert torch.equal(dq.DQTModel.load(good).eval()(probe()), model(probe()))


def test_frozen_model_and_truncation_are_checked(tmp_path):
    frozen = small_model().freeze()
    path = tmp_path / "frozen.pt"
    frozen.save(path)
    data = path.read_bytes()
    for cut in (0, 10, len(checkpoint.MAGIC) + 5, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(dq.CheckpointError):
            dq.FrozenDQTModel.load(path)


def test_a_damaged_body_with_a_matching_digest_never_advises_unsafe_loading(tmp_path):
    """A body that is not a loadable payload, re-digested so the check passes (a file written by
    other software in our container): torch's advice to retry with weights_only=False is not
    passed on."""
    buffer = io.BytesIO()
    torch.save({"x": fractions.Fraction(1, 3)}, buffer)  # not allow-listed for weights_only loading
    body = buffer.getvalue()
    path = tmp_path / "foreign.pt"
    path.write_bytes(checkpoint.MAGIC + hashlib.sha256(body).digest() + body)
    with pytest.raises(dq.CheckpointError, match="cannot be read") as info:
        dq.DQTModel.load(path)
    assert "weights_only" not in str(info.value)


def test_legacy_bare_torch_files_load_with_a_warning(tmp_path, caplog):
    model = small_model()
    new = tmp_path / "new.pt"
    model.save(new)
    payload = checkpoint.load_file(new)
    legacy = tmp_path / "legacy.pt"
    torch.save(payload, legacy)  # what dqt-triton wrote before checkpoints carried a digest
    with caplog.at_level(logging.WARNING, logger="dqt_triton.checkpoint"):
        loaded = dq.DQTModel.load(legacy)
    assert "no integrity digest" in caplog.text
    assert torch.equal(loaded.eval()(probe()), model(probe()))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full to produce a real ENOSPC")
def test_full_disk_names_the_directory_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """The temporary file is a link to /dev/full, so the kernel answers the write with ENOSPC."""
    model = small_model()
    path = tmp_path / "model.pt"
    model.save(path)
    before = path.read_bytes()
    os.symlink("/dev/full", f"{path}.tmp-{os.getpid()}")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(dq.DiskFullError, match=f"no space left on {tmp_path}") as info:
        model.save(path)
    assert isinstance(info.value, OSError)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_stale_temporaries_of_dead_processes_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "model.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f"model.pt.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f"model.pt.tmp-{os.getppid()}"  # a running process's save in progress
    live.write_bytes(b"being written")
    other = tmp_path / "notes.txt.tmp-1"
    other.write_bytes(b"not ours")
    small_model().save(path)
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["model.pt", live.name, other.name])


def test_loading_a_directory_or_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(dq.CheckpointError, match="is a directory"):
        dq.DQTModel.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        dq.DQTModel.load(tmp_path / "missing.pt")
