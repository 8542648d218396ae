"""Loaders for the shipped data (a Shakespeare corpus, 5,000 MNIST digits) and for users' own files
(any UTF-8 text file; CIFAR-10 in its python-pickle batch layout). Errors name the path."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch

CLASSES = 10
"""MNIST's digits and CIFAR-10's classes: labels are 0–9."""


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the path."""


def shipped(name: str) -> Path:
    """Path of a data file shipped in the package (``shakespeare.txt``, ``mnist_5k.csv.gz``)."""
    path = Path(str(resources.files("specopt") / "data" / name))
    if not path.is_file():
        raise DataError(f"shipped data file {path} is missing: reinstall specopt")
    return path


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a data file's bytes, or of a data directory's files (their relative names and bytes, in name
    order): a resumed run checks that its data is still the data it started on."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    try:
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else "").encode() + b"\0")
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    except OSError as e:
        raise DataError(f"cannot read the data {path}: {e.strerror or e}") from None
    return digest.hexdigest()


def read_text(path: str | Path | None = None) -> str:
    """A text corpus: ``path`` or, when None, the shipped Shakespeare."""
    path = Path(path) if path is not None else shipped("shakespeare.txt")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"text file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read text file {path}: {e}") from None
    if len(text) < 1000:
        raise DataError(f"text file {path} holds {len(text)} characters; need at least 1000 to train on")
    return text


def load_mnist(path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST rows of 784 pixels (0–255) and a label from a (gzipped) CSV: images (N, 1, 28, 28) in [0, 1], labels
    (digits 0–9). The label is the last column (the shipped file) or the first (Kaggle's ``mnist_train.csv``), as a
    header line names it (``label``) or, without one, the one end column that holds more than one digit (the other
    end is a corner pixel, 0); a file where both ends could be the label is refused."""
    path = Path(path) if path is not None else shipped("mnist_5k.csv.gz")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's "input contained no data": the shape check below says it
            first = f.readline()
            header = [c.strip().lower() for c in first.split(",")] if any(c.isalpha() for c in first) else None
            if header is None:
                f.seek(0)
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except FileNotFoundError:
        raise DataError(f"MNIST file not found: {path}") from None
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read MNIST CSV {path}: {e}") from None
    if rows.shape[0] == 0:
        raise DataError(f"MNIST CSV {path} holds no rows")
    if rows.shape[1] != 785:
        raise DataError(f"MNIST CSV {path} must have 785 columns (784 pixels and a label), got {rows.shape[1]}")
    if _label_column(rows, header, path) == 0:
        rows = np.concatenate([rows[:, 1:], rows[:, :1]], axis=1)
    _check_labels(rows[:, 784], path, "MNIST CSV", "row")
    bad = np.flatnonzero(((rows[:, :784] < 0) | (rows[:, :784] > 255)).any(axis=1))
    if len(bad):
        raise DataError(f"MNIST CSV {path}: row {bad[0] + 1} has a pixel outside 0–255 ({len(bad)} such row(s))")
    images = torch.from_numpy(rows[:, :784]).float().div_(255).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(rows[:, 784])


def _label_column(rows: np.ndarray, header: list[str] | None, path: Path) -> int:
    """0 or 784: where the label of an MNIST CSV is (see :func:`load_mnist`)."""
    if header is not None and "label" in (header[0], header[-1]):
        return 0 if header[0] == "label" else 784
    digits = [c for c in (784, 0) if ((rows[:, c] >= 0) & (rows[:, c] < CLASSES)).all()
              and len(np.unique(rows[:, c])) > 1]
    if len(digits) == 1:
        return digits[0]
    if digits:
        raise DataError(f"MNIST CSV {path}: both its first and its last column could be the label; name it in a "
                        "header line ('label' first or last)")
    if ((rows[:, 784] >= 0) & (rows[:, 784] < CLASSES)).all():
        raise DataError(f"MNIST CSV {path}: every row has label {rows[0, 784]} (and no other end column holds two "
                        "digits): a classifier needs at least two classes")
    return 784  # no column of digits: the label check names the row


def _check_labels(labels: np.ndarray, path: Path, kind: str, item: str) -> None:
    """Labels must be classes 0–9 (digits; CIFAR-10's classes): cross-entropy cannot take any other."""
    bad = np.flatnonzero((labels < 0) | (labels >= CLASSES))
    if len(bad):
        raise DataError(f"{kind} {path}: {item} {bad[0] + 1} has label {labels[bad[0]]}; labels must be classes "
                        f"0–{CLASSES - 1} ({len(bad)} out-of-range label(s) in all)")


def load_cifar10(directory: str | Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """CIFAR-10 from its python-pickle layout: ``data_batch_1…5`` (training) and ``test_batch``; each file a
    pickled dict with ``b"data"`` (N×3072 uint8, channel-major) and ``b"labels"``. Returns
    ``((train_x, train_y), (test_x, test_y))`` with images (N, 3, 32, 32) in [0, 1]."""
    directory = Path(directory)
    if directory.is_file():
        raise DataError(f"{directory} is a file, but not an MNIST CSV (.csv or .csv.gz): the image tasks' --data is "
                        "an MNIST CSV or a CIFAR-10 directory")
    if not directory.is_dir():
        raise DataError(f"CIFAR-10 directory not found: {directory}")
    train = sorted(directory.glob("data_batch_*"))
    if not train:
        raise DataError(f"no data_batch_* files in {directory} (expected the CIFAR-10 python layout)")
    test = directory / "test_batch"
    if not test.is_file():
        raise DataError(f"CIFAR-10 test_batch not found in {directory}")
    return _cat([_cifar_file(p) for p in train]), _cifar_file(test)


def _cifar_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError, AttributeError,
            IndexError, OverflowError) as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {e!r}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"CIFAR-10 batch {path} must hold N×3072 data and N labels, got {data.shape}, {labels.shape}")
    if not len(data):
        raise DataError(f"CIFAR-10 batch {path} holds no images")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or data.min() < 0 or data.max() > 255:
            raise DataError(f"CIFAR-10 batch {path}: its data must be pixel values 0–255 (uint8), got "
                            f"{data.dtype} from {data.min()} to {data.max()}")
        data = data.astype(np.uint8)
    _check_labels(labels, path, "CIFAR-10 batch", "image")
    return torch.from_numpy(data).float().div_(255).reshape(-1, 3, 32, 32), torch.from_numpy(labels)


def _cat(parts):
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
