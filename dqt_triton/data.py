"""The datasets `dqt train` knows, as master codes: digits (embedded), MADELON and MNIST-1D
(generated offline), CIFAR-10 (a local copy), and the character corpus of Python's own help
text (pydoc, shipped with CPython)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
DATASETS = ("digits", "madelon", "mnist1d", "cifar10", "pydoc")
PYDOC_CONTEXT = 32  # characters per sequence of the pydoc corpus


@dataclass
class Dataset:
    """A dataset as master codes: real value = code * input_scale."""

    x_train: torch.Tensor  # uint8 codes [N, *shape]
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple
    num_classes: int
    input_scale: float = 1.0 / 255.0
    input_signed: bool = False


def load_dataset(name: str, data_dir: Optional[str] = None, seed: int = 0, limit: int = 0) -> Dataset:
    """digits (scikit-learn, embedded: 8x8 images, 1,437/360 split), madelon (scikit-learn's
    generator), mnist1d (the `mnist1d` package's generator, offline: 4,000/1,000 signals of
    length 40) or cifar10 (a local copy in torchvision's `cifar-10-batches-py` format)."""
    if name == "digits":
        ds = _load_digits()
    elif name == "cifar10":
        ds = _load_cifar10(data_dir)
    elif name == "madelon":
        ds = _make_madelon()
    elif name == "mnist1d":
        ds = _make_mnist1d()
    elif name == "pydoc":
        ds = _load_pydoc()
    else:
        raise ValueError(f"unknown dataset {name!r}; choose {', '.join(DATASETS)}")
    if limit:
        ds.x_train, ds.y_train = ds.x_train[:limit], ds.y_train[:limit]
    return ds


def _load_digits() -> Dataset:
    """scikit-learn's digits (shipped with the package): pixels 0..16 as uint8 codes
    round(p * 255 / 16) of shape [1, 8, 8], a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.round(torch.tensor(data.images, dtype=torch.float32) * (255.0 / 16.0)).to(torch.uint8)[:, None]
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))  # fixed split
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return Dataset(x[train], y[train], x[test], y[test], (1, 8, 8), 10)


def pydoc_ids(text: str) -> torch.Tensor:
    """Character ids of the pydoc corpus: newline 0, printable ASCII 32..126 as 1..95; the few
    other characters (typographic quotes and dashes, 575 of 465,048) are dropped."""
    ids = [0 if ch == "\n" else ord(ch) - 31 for ch in text if ch == "\n" or 32 <= ord(ch) < 127]
    return torch.tensor(ids, dtype=torch.uint8)


def _load_pydoc() -> Dataset:
    """Python's help topics (`pydoc_data.topics`, part of every CPython: 79 topics, 465 KB of
    English prose and code, no download), as next-character prediction: non-overlapping windows
    of PYDOC_CONTEXT characters (uint8 ids [T], vocabulary 96) with the following characters as
    targets [T]; every 10th window is the test split (13,063 / 1,451 windows)."""
    from pydoc_data.topics import topics

    ids = pydoc_ids("\n".join(topics[k] for k in sorted(topics)))
    windows = (len(ids) - 1) // PYDOC_CONTEXT
    starts = torch.arange(windows) * PYDOC_CONTEXT
    span = starts[:, None] + torch.arange(PYDOC_CONTEXT + 1)[None, :]
    seq = ids[span]
    x, y = seq[:, :-1].contiguous(), seq[:, 1:].long()
    test = torch.arange(windows) % 10 == 9
    return Dataset(x[~test], y[~test], x[test], y[test], (PYDOC_CONTEXT,), 96, 1.0, False)


def _make_mnist1d() -> Dataset:
    """MNIST-1D (Greydanus and Kobak, ICML 2024): the `mnist1d` package's generator with its
    default arguments (seed 42), run offline (`make_dataset`, never the download of
    `get_dataset`); 4,000/1,000 signals of length 40, 10 classes, as int8 codes [1, 1, 40]
    with one global scale from the training split. The generator seeds numpy's and Python's
    global random state; both are restored afterwards."""
    import random
    import warnings

    import numpy as np

    try:
        with warnings.catch_warnings():  # on SciPy >= 1.17 its import warns about scipy.ndimage.filters
            warnings.simplefilter("ignore", DeprecationWarning)
            from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ImportError("--data mnist1d needs the mnist1d package: pip install -e '.[mnist1d]' "
                          "(or pip install mnist1d)") from exc
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_train = torch.tensor(data["x"], dtype=torch.float32)
    x_test = torch.tensor(data["x_test"], dtype=torch.float32)
    scale = float(x_train.abs().max()) / 127.0

    def codes(x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8)[:, None, None, :]

    return Dataset(codes(x_train), torch.tensor(data["y"], dtype=torch.long), codes(x_test),
                   torch.tensor(data["y_test"], dtype=torch.long), (1, 1, x_train.shape[1]), 10, scale, True)


def _make_madelon() -> Dataset:
    """A harder offline problem from a published generator: scikit-learn's make_classification
    is Guyon's MADELON generator (NIPS 2003 feature-selection challenge). 10 classes, 64
    features (24 informative, 16 redundant, 24 noise), 2 clusters per class, 3% label noise;
    fixed generator seed. Features become int8 codes with one global scale."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=6000, n_features=64, n_informative=24, n_redundant=16, n_classes=10,
                               n_clusters_per_class=2, flip_y=0.03, class_sep=1.5, random_state=2003)
    x = torch.tensor(x, dtype=torch.float32)
    scale = float(x.abs().max()) / 127.0
    codes = torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8)
    y = torch.tensor(y, dtype=torch.long)
    return Dataset(codes[:5000], y[:5000], codes[5000:], y[5000:], (64,), 10, scale, True)


def _load_cifar10(data_dir: Optional[str]) -> Dataset:
    if not data_dir:
        raise FileNotFoundError("--data cifar10 needs --data-dir PATH pointing at a local CIFAR-10 copy "
                                "(the folder that contains cifar-10-batches-py/, as torchvision downloads it)")
    root = Path(data_dir)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    missing = [f for f in CIFAR_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 not found under {root}: missing {', '.join(missing)} in {folder}. "
                                "Expected torchvision's python format (cifar-10-batches-py/data_batch_1..5, "
                                "test_batch); nothing is downloaded.")
    xs, ys = [], []
    for name in CIFAR_FILES:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the dataset's official (numpy-only) format
        xs.append(torch.as_tensor(batch[b"data"]).reshape(-1, 3, 32, 32))
        ys.append(torch.as_tensor(batch[b"labels"]))
    return Dataset(torch.cat(xs[:5]), torch.cat(ys[:5]).long(), xs[5], ys[5].long(), (3, 32, 32), 10)


__all__ = ["Dataset", "DATASETS", "load_dataset"]
