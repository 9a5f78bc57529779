"""Dataset registry, digits, the local-file loaders (on tiny fake files) and normalization."""

from __future__ import annotations

import functools
import gzip
import operator
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import registered as registered_in

from ckpt_analyzer.data import (
    DATASETS,
    ImageData,
    channel_stats,
    denormalize,
    load_dataset,
    normalize,
)
from ckpt_analyzer.data.digits import load_digits
from ckpt_analyzer.data.npz import load_npz
from ckpt_analyzer.data.vision import (
    load_cifar10,
    load_cifar100,
    load_fashion_mnist,
    load_mnist,
    load_svhn,
    read_idx,
)
from ckpt_analyzer.errors import DataError, UsageError

torch.set_num_threads(1)


@pytest.fixture
def registered() -> Iterator[None]:
    with registered_in(DATASETS, {"digits": load_digits, "npz": load_npz, "cifar10": load_cifar10}):
        yield


# ---------------------------------------------------------------- normalization
def ref_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    means, stds = [], []
    for c in range(x.shape[1]):
        vals = [float(v) for v in x[:, c].ravel()]
        m = sum(vals) / len(vals)
        means.append(m)
        stds.append((sum((v - m) ** 2 for v in vals) / len(vals)) ** 0.5)
    return means, stds


def test_normalize_matches_per_channel_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 5, generator=gen)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = normalize(x, mean, std)
    for n in range(4):
        for c in range(3):
            torch.testing.assert_close(out[n, c], (x[n, c] - mean[c]) / std[c])
    torch.testing.assert_close(denormalize(out, mean, std), x)
    torch.testing.assert_close(normalize(x[0], mean, std), out[0])  # (C, H, W) works too
    with pytest.raises(ValueError, match="channel statistics"):
        normalize(x, (0.1,) * 2, (0.2,) * 2)


def test_normalize_keeps_dtype_and_device() -> None:
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    assert normalize(x, (0.5,), (0.25,)).dtype == torch.float64


def test_channel_stats_matches_loop() -> None:
    x = torch.rand(6, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    mean, std = channel_stats(x)
    rm, rs = ref_stats(x.numpy())
    np.testing.assert_allclose(mean, rm, rtol=1e-6)
    np.testing.assert_allclose(std, rs, rtol=1e-6)


def test_imagedata_validates() -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    ok = ImageData("t", x, y, x[:2], y[:2], 3, (0.5,), (0.2,))
    assert (ok.in_channels, ok.image_size, ok.n_train, ok.n_test) == (1, 8, 4, 2)
    torch.testing.assert_close(ok.normalized(x), (x - 0.5) / 0.2)
    bad = [
        {"y_train": torch.tensor([0, 1, 3, 1])},  # label >= num_classes
        {"y_train": y.int()},  # not int64
        {"x_train": x.double()},  # not float32
        {"x_train": torch.rand(4, 1, 8, 7), "x_test": torch.rand(2, 1, 8, 7)},  # not square
        {"x_test": torch.rand(2, 1, 6, 6)},  # shapes differ
        {"mean": (0.5, 0.5)},  # wrong channel count
        {"std": (0.0,)},
        {"y_test": y[:1]},  # count mismatch
    ]
    base = {"name": "t", "x_train": x, "y_train": y, "x_test": x[:2], "y_test": y[:2],
            "num_classes": 3, "mean": (0.5,), "std": (0.2,)}
    for change in bad:
        with pytest.raises(DataError, match="dataset 't'"):
            ImageData(**{**base, **change})  # type: ignore[arg-type,dict-item]


# ---------------------------------------------------------------- digits
def test_digits_split() -> None:
    from sklearn.datasets import load_digits as sk

    raw = sk()
    d = load_digits(None, 0)
    assert (d.n_train, d.n_test, d.num_classes) == (1347, 450, 10)
    assert (d.in_channels, d.image_size) == (1, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert d.split_seed == 0
    # the two splits are a partition of the 1797 images, pixels /16
    both = torch.cat([d.x_train, d.x_test]).flatten(1).numpy() * 16
    labels = torch.cat([d.y_train, d.y_test]).numpy()
    keys = sorted(zip(map(bytes, both.astype(np.uint8)), labels.tolist()))
    ref = sorted(zip(map(bytes, raw.data.astype(np.uint8)), raw.target.tolist()))
    assert keys == ref
    # stratified: each class has 25% of its images in the test split, up to rounding
    for c in range(10):
        n_c = int((raw.target == c).sum())
        assert abs(int((d.y_test == c).sum()) - 0.25 * n_c) <= 1.0
    # statistics of the training split
    rm, rs = ref_stats(d.x_train.numpy())
    np.testing.assert_allclose(d.mean, rm, rtol=1e-6)
    np.testing.assert_allclose(d.std, rs, rtol=1e-6)


def test_digits_split_reproducible_per_seed() -> None:
    a, b, c = load_digits(None, 0), load_digits(None, 0), load_digits(None, 1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert c.split_seed == 1 and c.mean != a.mean


def test_load_dataset_registry(registered: None) -> None:
    d = load_dataset("digits", None, split_seed=2)
    assert d.name == "digits" and d.split_seed == 2
    with pytest.raises(UsageError, match="did you mean 'digits'"):
        load_dataset("digitz")


# ---------------------------------------------------------------- fake files
def cifar_records(n: int, rng: np.random.Generator, label_bytes: int,
                  num_classes: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n binary CIFAR records and the images/labels they encode (built element by element)."""
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(n, label_bytes), dtype=np.uint8)
    out = bytearray()
    for i in range(n):
        out += bytes(labels[i].tolist())
        for c in range(3):
            for h in range(32):
                out += bytes(images[i, c, h].tolist())
    return bytes(out), images, labels


def write_cifar10_bin(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        raw, x, y = cifar_records(2, rng, 1, 10)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        xs.append(x)
        ys.append(y[:, 0])
    raw, xt, yt = cifar_records(3, rng, 1, 10)
    (folder / "test_batch.bin").write_bytes(raw)
    return np.concatenate(xs), np.concatenate(ys), xt, yt[:, 0]


def as_float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32) / 255)


def test_cifar10_binary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y, xt, yt = write_cifar10_bin(tmp_path / "cifar-10-batches-bin", rng)
    d = load_cifar10(tmp_path)
    assert d.name == "cifar10" and d.num_classes == 10 and d.split_seed is None
    assert (d.n_train, d.n_test, d.in_channels, d.image_size) == (10, 3, 3, 32)
    torch.testing.assert_close(d.x_train, as_float(x), rtol=0, atol=0)
    torch.testing.assert_close(d.x_test, as_float(xt), rtol=0, atol=0)
    assert d.y_train.tolist() == y.tolist() and d.y_test.tolist() == yt.tolist()
    assert d.mean == (0.4914, 0.4822, 0.4465) and d.root == str(tmp_path)


def write_py_batch(path: Path, data: np.ndarray, labels: list[int], key: str,
                   protocol: int = 2) -> None:
    # bytes keys, as the python-2 pickles of the CIFAR tarballs read with encoding="bytes"
    path.write_bytes(pickle.dumps({b"batch_label": b"x", b"data": data, key.encode(): labels},
                                  protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_python_version(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=2).tolist()
        write_py_batch(folder / name, x, y, "labels", protocol)
        xs.append(x)
        ys.append(y)
    d = load_cifar10(tmp_path)
    torch.testing.assert_close(d.x_train, as_float(np.concatenate(xs[:5]).reshape(-1, 3, 32, 32)))
    assert d.y_train.tolist() == functools.reduce(operator.iadd, ys[:5], [])
    assert d.y_test.tolist() == ys[5]


def test_binary_version_is_preferred(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, _, _, _ = write_cifar10_bin(tmp_path / "cifar-10-batches-bin", rng)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_py_batch(folder / name, np.zeros((2, 3072), np.uint8), [0, 0], "labels")
    torch.testing.assert_close(load_cifar10(tmp_path).x_train, as_float(x))


class Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.target),))


def test_python_batches_refuse_arbitrary_objects(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
        write_py_batch(folder / name, np.zeros((1, 3072), np.uint8), [0], "labels")
    target = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(
        pickle.dumps({b"data": Evil(target), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: refusing to unpickle (posix|os|nt)\.mkdir"):
        load_cifar10(tmp_path)
    assert not target.exists()


def test_cifar100_binary_and_python(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    folder = tmp_path / "bin" / "cifar-100-binary"
    folder.mkdir(parents=True)
    raw, x, y = cifar_records(4, rng, 2, 100)
    (folder / "train.bin").write_bytes(raw)
    raw_t, xt, yt = cifar_records(2, rng, 2, 100)
    (folder / "test.bin").write_bytes(raw_t)
    d = load_cifar100(tmp_path / "bin")
    assert d.num_classes == 100 and d.y_train.tolist() == y[:, 1].tolist()  # fine labels
    torch.testing.assert_close(d.x_train, as_float(x), rtol=0, atol=0)
    assert d.y_test.tolist() == yt[:, 1].tolist()

    pyf = tmp_path / "py" / "cifar-100-python"
    pyf.mkdir(parents=True)
    write_py_batch(pyf / "train", x.reshape(4, -1), y[:, 1].tolist(), "fine_labels")
    write_py_batch(pyf / "test", xt.reshape(2, -1), yt[:, 1].tolist(), "fine_labels")
    e = load_cifar100(tmp_path / "py")
    assert torch.equal(e.x_train, d.x_train) and torch.equal(e.y_test, d.y_test)


def test_cifar_truncated_binary(tmp_path: Path) -> None:
    write_cifar10_bin(tmp_path / "cifar-10-batches-bin", np.random.default_rng(4))
    p = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="data_batch_3.bin: .* not a whole number"):
        load_cifar10(tmp_path)


def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + bytes(arr.ravel().tolist())


def write_mnist(folder: Path, rng: np.random.Generator, gz: bool) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, 5, dtype=np.uint8),
              rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, 3, dtype=np.uint8))
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for name, arr in zip(names, arrays):
        data = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_torchvision_layout(tmp_path: Path, gz: bool) -> None:
    x, y, xt, yt = write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(5), gz)
    d = load_mnist(tmp_path)
    assert (d.n_train, d.n_test, d.in_channels, d.image_size) == (5, 3, 1, 28)
    torch.testing.assert_close(d.x_train, as_float(x[:, None]), rtol=0, atol=0)
    torch.testing.assert_close(d.x_test, as_float(xt[:, None]), rtol=0, atol=0)
    assert d.y_train.tolist() == y.tolist() and d.y_test.tolist() == yt.tolist()
    assert d.mean == (0.1307,) and d.std == (0.3081,)


def test_fashion_mnist_layouts(tmp_path: Path) -> None:
    x, *_ = write_mnist(tmp_path / "a" / "FashionMNIST" / "raw", np.random.default_rng(6), True)
    d = load_fashion_mnist(tmp_path / "a")
    assert d.name == "fashion_mnist" and d.mean == (0.2860,)
    torch.testing.assert_close(d.x_train, as_float(x[:, None]), rtol=0, atol=0)
    x2, *_ = write_mnist(tmp_path / "b", np.random.default_rng(7), False)  # files directly in ROOT
    torch.testing.assert_close(load_fashion_mnist(tmp_path / "b").x_train, as_float(x2[:, None]))


def test_idx_errors(tmp_path: Path) -> None:
    p = tmp_path / "f-idx3-ubyte"
    good = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    p.write_bytes(good)
    assert read_idx(p).shape == (2, 3, 3)
    p.write_bytes(good[:-1])
    with pytest.raises(DataError, match="f-idx3-ubyte: IDX file has 33 bytes, its header says 34"):
        read_idx(p)
    p.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(DataError, match="bad magic"):
        read_idx(p)
    p.write_bytes(good[:2] + b"\x0d" + good[3:])
    with pytest.raises(DataError, match="not unsigned byte"):
        read_idx(p)


def test_svhn(tmp_path: Path) -> None:
    import scipy.io

    rng = np.random.default_rng(8)
    xs, ys = {}, {}
    for split, n in (("train", 4), ("test", 3)):
        xs[split] = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        ys[split] = np.array([[10], [1], [9], [10]][:n], dtype=np.uint8)
        scipy.io.savemat(str(tmp_path / f"{split}_32x32.mat"), {"X": xs[split], "y": ys[split]})
    d = load_svhn(tmp_path)
    assert d.y_train.tolist() == [0, 1, 9, 0] and d.y_test.tolist() == [0, 1, 9]
    for n in range(4):
        for c in range(3):
            torch.testing.assert_close(d.x_train[n, c], as_float(xs["train"][:, :, c, n]))
    assert len(d.mean) == 3


@pytest.mark.parametrize("loader,needle", [
    (load_cifar10, "data_batch_1.bin"), (load_cifar100, "train.bin"),
    (load_svhn, "train_32x32.mat"), (load_mnist, "train-images-idx3-ubyte"),
    (load_fashion_mnist, "FashionMNIST/raw"),
])
def test_missing_files_say_what_to_put_where(tmp_path: Path, loader: object,
                                             needle: str) -> None:
    with pytest.raises(DataError, match="--data-root") as info:
        loader(None)  # type: ignore[operator]
    assert needle in str(info.value)
    with pytest.raises(DataError) as info:
        loader(tmp_path)  # type: ignore[operator]
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and str(tmp_path) in msg
    with pytest.raises(DataError, match="does not exist"):
        loader(tmp_path / "nope")  # type: ignore[operator]


def test_cifar10_error_names_the_expected_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert f"{tmp_path}/cifar-10-batches-bin/" in str(info.value)
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(folder, np.random.default_rng(9))
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-bin lacks test_batch.bin;"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------- npz
def test_npz_layouts(tmp_path: Path, registered: None) -> None:
    rng = np.random.default_rng(10)
    hw = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    path = tmp_path / "a.npz"
    np.savez(path, x_train=hw, y_train=np.arange(6) % 3, x_test=hw[:2], y_test=np.array([0, 4]))
    d = load_npz(path)
    assert (d.in_channels, d.image_size, d.num_classes) == (1, 5, 5)  # max label 4 -> 5
    torch.testing.assert_close(d.x_train, as_float(hw[:, None]))
    rm, rs = ref_stats(d.x_train.numpy())
    np.testing.assert_allclose(d.mean, rm, rtol=1e-6)
    np.testing.assert_allclose(d.std, rs, rtol=1e-6)

    nhwc = rng.random((4, 6, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x_train=nhwc, y_train=np.array([0, 1, 1, 0]),
             x_test=nhwc[:1], y_test=np.array([1]))
    e = load_dataset("npz", tmp_path)  # a folder holding data.npz
    torch.testing.assert_close(e.x_train, torch.from_numpy(nhwc.transpose(0, 3, 1, 2).copy()))
    assert e.num_classes == 2 and e.root == str(tmp_path / "data.npz")

    nchw = rng.random((4, 3, 6, 6))
    np.savez(path, x_train=nchw, y_train=np.zeros(4, np.int32), x_test=nchw[:1],
             y_test=np.ones(1, np.int64))
    torch.testing.assert_close(load_npz(path).x_train, torch.from_numpy(nchw).float())


def npz_arrays(**change: np.ndarray | None) -> dict[str, np.ndarray]:
    """Valid tiny arrays with some replaced (None drops the array)."""
    base = {"x_train": np.arange(32, dtype=np.uint8).reshape(2, 4, 4), "y_train": np.zeros(2, int),
            "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.zeros(1, int)}
    base.update(change)  # type: ignore[arg-type]
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("arrays,pattern", [
    (npz_arrays(x_test=None, y_test=None), "missing arrays x_test, y_test"),
    (npz_arrays(x_train=np.zeros((2, 4, 5)), x_test=np.zeros((1, 4, 5))), "square"),
    (npz_arrays(x_train=np.full((2, 4, 4), 2.0)), r"in \[0, 1\]"),
    (npz_arrays(x_train=np.zeros((2, 4, 4), np.int16)), "uint8 or float"),
    (npz_arrays(y_train=np.zeros(3, int)), "3 labels for 2 images"),
    (npz_arrays(y_train=np.array([0.0, 1.0])), "integers"),
    (npz_arrays(x_test=np.zeros((1, 5, 5), np.uint8)), "differ in shape"),
    (npz_arrays(x_train=np.zeros((2, 4, 4), np.uint8)), "constant channel"),
    (npz_arrays(x_train=np.zeros((2, 4), np.uint8)), r"must be \(N, H, W\)"),
])
def test_npz_errors_name_the_file(tmp_path: Path, arrays: dict[str, np.ndarray],
                                  pattern: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=pattern) as info:
        load_npz(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_npz_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-root"):
        load_npz(None)
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path)  # folder without data.npz
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a readable .npz"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([object()]), y_train=np.zeros(1),
             x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(DataError, match="obj.npz: not a readable .npz"):
        load_npz(tmp_path / "obj.npz")


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_digits_split_equals_sklearns_train_test_split(seed: int) -> None:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    from ckpt_analyzer.data.digits import load_digits, stratified_split

    bunch = sk_load_digits()
    y = bunch.target
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=seed)
    a, b = stratified_split(y, 0.25, seed)
    assert np.array_equal(np.sort(tr), a) and np.array_equal(np.sort(te), b)
    d = load_digits(None, seed)
    assert np.array_equal(d.x_train[:, 0].numpy(), (bunch.images[np.sort(tr)] / 16.0).astype(np.float32))
    assert np.array_equal(d.y_test.numpy(), y[np.sort(te)])


def test_digits_loads_without_importing_sklearn() -> None:
    import subprocess
    import sys

    code = ("import sys; from ckpt_analyzer.data.digits import load_digits; load_digits(None, 0); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_channel_stats_do_not_depend_on_the_thread_count() -> None:
    from ckpt_analyzer.data import channel_stats

    x = torch.rand(3000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = channel_stats(x)
        torch.set_num_threads(2)
        two = channel_stats(x)
    finally:
        torch.set_num_threads(before)
    assert one == two
    ref = x.double().numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.allclose(one[0], ref.mean(axis=1), rtol=0, atol=1e-15)
    assert np.allclose(one[1], ref.std(axis=1), rtol=0, atol=1e-15)
