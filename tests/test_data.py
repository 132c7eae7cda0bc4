import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from ulviz import DataError, UnknownNameError, load_dataset
from ulviz.data.datasets import read_idx


def _check_tensors(ds, shape, classes):
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == torch.float32 and x.shape[1:] == shape
        assert x.min() >= 0 and x.max() <= 1
    for y, x in ((ds.y_train, ds.x_train), (ds.y_test, ds.x_test)):
        assert y.dtype == torch.long and len(y) == len(x)
    assert ds.num_classes == classes


def test_digits_is_fixed_split_of_sklearn():
    from sklearn.datasets import load_digits

    ds = load_digits_twice = load_dataset("digits")
    _check_tensors(ds, (1, 8, 8), 10)
    assert len(ds.x_train) == 1437 and len(ds.x_test) == 360
    # every image is one of sklearn's, scaled by 1/16, and train/test do not overlap
    ref = torch.from_numpy(load_digits().images.astype(np.float32) / 16).reshape(1797, -1)
    both = torch.cat([ds.x_train, ds.x_test]).reshape(1797, -1)
    dist = torch.cdist(both, ref)
    assert dist.min(1).values.max() == 0
    assert len(set(dist.argmin(1).tolist())) == 1797
    again = load_dataset("digits")
    assert torch.equal(again.x_test, load_digits_twice.x_test)


def test_synthetic_and_limits():
    ds = load_dataset("synthetic", train_limit=100, test_limit=50)
    _check_tensors(ds, (1, 8, 8), 10)
    assert len(ds.x_train) == 100 and len(ds.x_test) == 50


def test_unknown_dataset_lists_names():
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("imagenet")


def _write_idx(path, arr, gz=False):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_mnist_idx_full_layout(tmp_path):
    rng = np.random.RandomState(0)
    xtr, ytr = rng.randint(0, 256, (30, 28, 28)), rng.randint(0, 10, 30)
    xte, yte = rng.randint(0, 256, (12, 28, 28)), rng.randint(0, 10, 12)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", ytr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", xte)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", yte, gz=True)
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    _check_tensors(ds, (1, 28, 28), 10)
    assert torch.allclose(ds.x_train[:, 0] * 255, torch.tensor(xtr, dtype=torch.float32))
    assert ds.y_test.tolist() == yte.tolist()


def test_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="t10k-images"):
        load_dataset("mnist", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="no such directory"):
        load_dataset("mnist", data_dir=str(tmp_path / "nope"))
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 5, 28, 28) + b"\x00" * 100)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*bytes"):
        load_dataset("mnist", data_dir=str(tmp_path))
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)


def test_real_mnist_t10k_is_split(mnist_dir):
    ds = load_dataset("mnist", data_dir=str(mnist_dir))
    _check_tensors(ds, (1, 28, 28), 10)
    assert len(ds.x_train) == 8000 and len(ds.x_test) == 2000
    assert set(ds.y_train.tolist()) == set(range(10))
    # real digits: mostly black background, some bright strokes
    assert 0.05 < ds.x_test.mean() < 0.25 and ds.x_test.max() == 1.0


def _cifar_records(n, label_bytes, rng):
    labels = rng.randint(0, 10, (n, label_bytes)).astype(np.uint8)
    pixels = rng.randint(0, 256, (n, 3072)).astype(np.uint8)
    return np.concatenate([labels, pixels], 1), labels, pixels


def test_cifar10_binary_layout(tmp_path):
    rng = np.random.RandomState(1)
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    first_pixels = None
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec, labels, pixels = _cifar_records(4, 1, rng)
        first_pixels = pixels if first_pixels is None else first_pixels
        rec.tofile(sub / name)
    ds = load_dataset("cifar10", data_dir=str(tmp_path))
    _check_tensors(ds, (3, 32, 32), 10)
    assert len(ds.x_train) == 20 and len(ds.x_test) == 4
    assert torch.allclose(ds.x_train[0] * 255, torch.tensor(first_pixels[0].reshape(3, 32, 32), dtype=torch.float32))


def test_cifar100_binary_uses_fine_label(tmp_path):
    rng = np.random.RandomState(2)
    for name in ("train.bin", "test.bin"):
        rec, labels, _ = _cifar_records(6, 2, rng)
        rec.tofile(tmp_path / name)
    ds = load_dataset("cifar100", data_dir=str(tmp_path))
    assert ds.num_classes == 100
    assert ds.y_test.tolist() == labels[:, 1].tolist()


def test_cifar_bad_record_size(tmp_path):
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (tmp_path / name).write_bytes(b"\x01" * 100)
    with pytest.raises(DataError, match="3073-byte"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar_python_layout_needs_opt_in(tmp_path):
    rng = np.random.RandomState(3)
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.randint(0, 256, (3, 3072)).astype(np.uint8), b"labels": [1, 2, 3]}
        with open(sub / name, "wb") as f:
            pickle.dump(batch, f)
    with pytest.raises(DataError, match="pickle"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    ds = load_dataset("cifar10", data_dir=str(tmp_path), allow_pickle=True)
    assert len(ds.x_train) == 15 and ds.y_test.tolist() == [1, 2, 3]


def test_npz_nhwc_uint8_and_nchw_float(tmp_path):
    rng = np.random.RandomState(4)
    x = rng.randint(0, 256, (10, 16, 16, 3)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", x_train=x, y_train=np.arange(10) % 3, x_test=x[:4], y_test=np.arange(4) % 3)
    ds = load_dataset("npz", data_dir=str(tmp_path / "a.npz"))
    _check_tensors(ds, (3, 16, 16), 3)
    assert torch.allclose(ds.x_train[2, 1] * 255, torch.tensor(x[2, :, :, 1], dtype=torch.float32))
    xf = rng.rand(6, 1, 8, 8).astype(np.float32)
    np.savez(tmp_path / "b.npz", x_train=xf, y_train=np.zeros(6, int), x_test=xf, y_test=np.ones(6, int))
    ds = load_dataset("npz", data_dir=str(tmp_path / "b.npz"))
    assert torch.equal(ds.x_train, torch.from_numpy(xf))


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4, int)), "missing array"),
    (dict(x_train=np.full((4, 8, 8), 2.0), y_train=np.zeros(4, int), x_test=np.zeros((2, 8, 8)), y_test=np.zeros(2, int)), r"\[0, 1\]"),
    (dict(x_train=np.zeros((4, 8, 8)), y_train=np.zeros(3, int), x_test=np.zeros((2, 8, 8)), y_test=np.zeros(2, int)), "y_train"),
    (dict(x_train=np.zeros((4, 8)), y_train=np.zeros(4, int), x_test=np.zeros((2, 8)), y_test=np.zeros(2, int)), "x_train has shape"),
])
def test_npz_malformed(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("npz", data_dir=str(path))
    assert "bad.npz" in str(info.value)


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset("npz", data_dir=str(path))
