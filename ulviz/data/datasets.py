"""Datasets as in-memory tensors in [0, 1], NCHW, with a fixed train/test split.

Nothing is downloaded: data comes from scikit-learn's bundled digits, from local files in their
standard formats (MNIST IDX, CIFAR binary or python batches, a user's .npz), or is generated.
"""
from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.config import DataConfig
from ..core.errors import DataError, UnknownNameError


@dataclass(frozen=True)
class Dataset:
    """A train/test split held as tensors: x in [0, 1] float32 NCHW, y int64 class indices."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def with_train(self, x_train: torch.Tensor) -> "Dataset":
        """The same dataset with another (for example poisoned) training set; the test set stays clean."""
        if x_train.shape != self.x_train.shape:
            raise DataError(f"poisoned training set has shape {tuple(x_train.shape)}, expected {tuple(self.x_train.shape)}")
        return replace(self, x_train=x_train)


# -- registry -------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[[DataConfig], Dataset]] = {}


def _register(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn
    return deco


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_LOADERS)


def load_dataset(config: DataConfig | str = "digits", **overrides) -> Dataset:
    """Load a dataset by config or name, e.g. ``load_dataset("mnist", data_dir="~/mnist")``."""
    if isinstance(config, str):
        config = DataConfig(name=config, **overrides)
    elif overrides:
        config = replace(config, **overrides)
    if config.name not in _LOADERS:
        raise UnknownNameError("dataset", config.name, list_datasets())
    ds = _LOADERS[config.name](config)
    return _limited(ds, config.train_limit, config.test_limit)


def _limited(ds: Dataset, train_limit: int | None, test_limit: int | None) -> Dataset:
    for limit in (train_limit, test_limit):
        if limit is not None and limit <= 0:
            raise DataError(f"sample limits must be positive, got {limit}")
    return replace(
        ds,
        x_train=ds.x_train[:train_limit], y_train=ds.y_train[:train_limit],
        x_test=ds.x_test[:test_limit], y_test=ds.y_test[:test_limit],
    )


def _fixed_split(x: np.ndarray, y: np.ndarray, test_size: int, seed: int = 0):
    """A split that never changes between versions or machines: a seeded NumPy permutation."""
    order = np.random.RandomState(seed).permutation(len(x))
    test, train = order[:test_size], order[test_size:]
    return x[train], y[train], x[test], y[test]


def _as_dataset(name: str, xtr, ytr, xte, yte, num_classes: int | None = None) -> Dataset:
    """Tensors from uint8/float NCHW arrays, with the shared sanity checks."""
    ytr_t = torch.as_tensor(np.array(ytr, dtype=np.int64))
    yte_t = torch.as_tensor(np.array(yte, dtype=np.int64))
    k = int(max(ytr_t.max().item(), yte_t.max().item()) + 1) if num_classes is None else num_classes
    return Dataset(name, _to_unit_float(xtr), ytr_t, _to_unit_float(xte), yte_t, k)


def _to_unit_float(x: np.ndarray) -> torch.Tensor:
    if x.dtype == np.uint8:  # np.array copies: IDX arrays are read-only views of the file's bytes
        return torch.from_numpy(np.array(x)).float().div_(255.0)
    return torch.from_numpy(np.array(x, dtype=np.float32))


# the repository's root: run files of the bundled demo name their data relative to it
# ("data/cifar10-subset"), so they read the same from any working directory
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout (this file is ulviz/data/datasets.py)


def local_path(data_dir: str) -> Path:
    """`data_dir` as given (relative to the working directory), else relative to the project's root."""
    path = Path(data_dir).expanduser()
    if not path.exists() and not path.is_absolute() and (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    return path


def _require_dir(config: DataConfig) -> Path:
    if not config.data_dir:
        raise DataError(f"dataset {config.name!r} is read from local files: give --data-dir")
    path = local_path(config.data_dir)
    if not path.exists():
        raise DataError(f"{path}: no such directory (dataset {config.name!r})")
    return path


# -- digits ---------------------------------------------------------------------------------

@_register("digits")
def _digits(config: DataConfig) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0..16), 360 held out for testing."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    xtr, ytr, xte, yte = _fixed_split(x, bunch.target, test_size=360)
    return _as_dataset("digits", xtr, ytr, xte, yte, num_classes=10)


# -- synthetic ------------------------------------------------------------------------------

@_register("synthetic")
def _synthetic(config: DataConfig) -> Dataset:
    """Ten classes of smooth random 8x8 prototypes plus noise: learnable in seconds, for tests."""
    g = np.random.RandomState(1234)
    k, n_train, n_test, side = 10, 600, 200, 8
    coarse = g.rand(k, 1, 4, 4).astype(np.float32)
    protos = coarse.repeat(2, axis=2).repeat(2, axis=3)  # 8x8 blocks: smooth, distinct per class
    y = np.arange(n_train + n_test) % k
    g.shuffle(y)
    x = protos[y] + 0.25 * g.randn(len(y), 1, side, side).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    return _as_dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=k)


# -- MNIST IDX ------------------------------------------------------------------------------

_IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a uint8 array: magic 0x00000803 images, 0x00000801 labels."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim not in (1, 3) or len(raw) < header:
        raise DataError(f"{path}: expected a 1-D label or 3-D image IDX file, header says {ndim} dimensions")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header announces {dims} = {expected} bytes, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@_register("mnist")
def _mnist(config: DataConfig) -> Dataset:
    """MNIST (or any IDX set such as Fashion-MNIST) from a directory; t10k alone is split 8000/2000."""
    d = _require_dir(config)
    paths = {k: _find(d, stem) for k, stem in _IDX_NAMES.items()}
    if paths["test_x"] is None or paths["test_y"] is None:
        raise DataError(f"{d}: expected {_IDX_NAMES['test_x']}[.gz] and {_IDX_NAMES['test_y']}[.gz]")

    def pair(kx, ky):
        x, y = read_idx(paths[kx]), read_idx(paths[ky])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{paths[kx]}: {x.shape} images do not match {y.shape} labels in {paths[ky]}")
        return x[:, None], y

    xte, yte = pair("test_x", "test_y")
    if paths["train_x"] is not None and paths["train_y"] is not None:
        xtr, ytr = pair("train_x", "train_y")
    else:
        xtr, ytr, xte, yte = _fixed_split(xte, yte, test_size=len(xte) // 5)
    return _as_dataset("mnist", xtr, ytr, xte, yte, num_classes=10)


# -- CIFAR ----------------------------------------------------------------------------------

def _cifar_binary(files: list[Path], label_bytes: int, label_index: int):
    """CIFAR binary records: `label_bytes` label bytes then 3x32x32 uint8 pixels."""
    record = label_bytes + 3072
    xs, ys = [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DataError(f"{f}: size {raw.size} is not a multiple of the {record}-byte CIFAR record")
        rows = raw.reshape(-1, record)
        ys.append(rows[:, label_index].astype(np.int64))
        xs.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_pickle(files: list[Path], label_key: bytes):
    """CIFAR python batches. pickle can run code, so this only runs on the caller's opt-in."""
    xs, ys = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[label_key], dtype=np.int64)
        except Exception as e:  # any failure of an untrusted pickle is a data error
            raise DataError(f"{f}: not a CIFAR python batch ({type(e).__name__}: {e})") from None
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _cifar(config: DataConfig, classes: int) -> Dataset:
    d = _require_dir(config)
    if classes == 10:
        binary = ["cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 0]
        python = ["cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"]
    else:
        binary = ["cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1]  # coarse then fine label
        python = ["cifar-100-python", ["train"], ["test"], b"fine_labels"]

    def locate(sub: str, names: list[str]) -> list[Path] | None:
        for base in (d, d / sub):
            if all((base / n).is_file() for n in names):
                return [base / n for n in names]
        return None

    sub, train_names, test_names, label_bytes, label_index = binary
    tr, te = locate(sub, train_names), locate(sub, test_names)
    if tr and te:
        xtr, ytr = _cifar_binary(tr, label_bytes, label_index)
        xte, yte = _cifar_binary(te, label_bytes, label_index)
    else:
        sub, train_names, test_names, key = python
        tr, te = locate(sub, train_names), locate(sub, test_names)
        if not (tr and te):
            raise DataError(
                f"{d}: no CIFAR-{classes} files found; expected the binary layout ({binary[0]}/{binary[1][0]} ...) "
                f"or the python layout ({sub}/{train_names[0]} ...)")
        if not config.allow_pickle:
            raise DataError(
                f"{d}: only the CIFAR python layout is present, which is pickle and can run arbitrary code "
                "when loaded; use the binary layout, or opt in with allow_pickle=True (--allow-pickle) "
                "if you trust these files")
        xtr, ytr = _cifar_pickle(tr, key)
        xte, yte = _cifar_pickle(te, key)
    if ytr.max(initial=0) >= classes or yte.max(initial=0) >= classes:
        raise DataError(f"{d}: labels exceed {classes} classes; is this CIFAR-{classes}?")
    return _as_dataset(f"cifar{classes}", xtr, ytr, xte, yte, num_classes=classes)


_register("cifar10")(lambda c: _cifar(c, 10))
_register("cifar100")(lambda c: _cifar(c, 100))


# -- npz ------------------------------------------------------------------------------------

def open_npz(path: str | Path):
    """A .npz archive opened without pickle (object arrays are refused); DataError if unreadable."""
    path = Path(path).expanduser()
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None


@_register("npz")
def _npz(config: DataConfig) -> Dataset:
    """A user's .npz with x_train, y_train, x_test, y_test (NHWC or NCHW or NHW; uint8 or float in [0, 1])."""
    if not config.data_dir:
        raise DataError("dataset 'npz' needs the path of the .npz file (--data-dir FILE.npz)")
    path = local_path(config.data_dir)
    with open_npz(path) as archive:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found {', '.join(archive.files) or 'none'}")
        arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    x = {k: _nchw(path, k, arrays[k]) for k in ("x_train", "x_test")}
    y = {k: _labels(path, k, arrays[k], len(x["x" + k[1:]])) for k in ("y_train", "y_test")}
    if x["x_train"].shape[1:] != x["x_test"].shape[1:]:
        raise DataError(f"{path}: x_train images {x['x_train'].shape[1:]} differ from x_test images {x['x_test'].shape[1:]}")
    return _as_dataset("npz", x["x_train"], y["y_train"], x["x_test"], y["y_test"])


def _nchw(path: Path, key: str, a: np.ndarray) -> np.ndarray:
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or len(a) == 0:
        raise DataError(f"{path}: {key} has shape {a.shape}; expected N images as NHW, NHWC or NCHW")
    if a.shape[1] not in (1, 3, 4) and a.shape[3] in (1, 3, 4):
        a = a.transpose(0, 3, 1, 2)
    if a.shape[1] not in (1, 3, 4):
        raise DataError(f"{path}: {key} has shape {a.shape}; cannot tell the channel axis (1, 3 or 4 channels)")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{path}: {key} has dtype {a.dtype}; expected uint8 or float in [0, 1]")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise DataError(f"{path}: {key} float values must be finite and in [0, 1] (found {a.min():g}..{a.max():g})")
    return a.astype(np.float32)


def _labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: {key} has shape {y.shape}; expected ({n},) integer labels")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError(f"{path}: {key} must hold non-negative integer class indices (dtype {y.dtype})")
    return y.astype(np.int64)
