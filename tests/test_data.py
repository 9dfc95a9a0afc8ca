"""Tests for snnconv.data: real loaders on embedded digits and on small files in each data set's on-disk format."""

from __future__ import annotations

import gzip
import os
import struct
import time
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchvision import datasets

from fake_data import cifar_images, write_imagefolder, write_pickle
from snnconv import SnnconvError, data
from snnconv.config import DataConfig

RGB_MEAN, RGB_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def make_cfg(**overrides):
    return OmegaConf.structured(DataConfig(**overrides))


def collect(loader):
    """All batches of a loader: images [N, C, H, W], labels [N]."""
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def denormalise(x, mean, std):
    return x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def assert_one_line_error(excinfo, root):
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"data.root={root}" in message


# ---------------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_loaders():
    return data.build_loaders(make_cfg(name="digits", calib_size=100, batch_size=64, test_batch_size=100), seed=0)


def test_digits_split_shapes_and_values(digits_loaders):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    L = digits_loaders
    assert (L.num_classes, L.in_chans) == (10, 1)
    assert len(L.train.dataset) + len(L.test.dataset) == 1797
    assert len(L.test.dataset) == 360  # stratified 20 %
    x, y = next(iter(L.train))
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64

    test_x, test_y = collect(L.test)
    assert test_x.shape == (360, 1, 32, 32) and set(test_y.tolist()) == set(range(10))
    # Independent recomputation: 0..16 → [0, 1], bilinear 8→32, normalised with mean = std = 0.5.
    digits = load_digits()
    _, test_idx = train_test_split(np.arange(1797), test_size=0.2, stratify=digits.target, random_state=0)
    expected = F.interpolate(
        torch.tensor(digits.images[test_idx], dtype=torch.float32).unsqueeze(1) / 16,
        size=(32, 32),
        mode="bilinear",
        align_corners=False,
    )
    torch.testing.assert_close(denormalise(test_x, [0.5], [0.5]), expected)
    assert torch.equal(test_y, torch.tensor(digits.target[test_idx]))


def test_digits_calib_is_a_seeded_subset_of_train(digits_loaders):
    train_x, _ = collect(digits_loaders.train)  # augment=none: the train images as they are
    calib_x, calib_y = collect(digits_loaders.calib)
    assert calib_x.shape == (100, 1, 32, 32)
    train_images = {img.numpy().tobytes() for img in train_x}
    assert all(img.numpy().tobytes() in train_images for img in calib_x)
    assert len(set(calib_y.tolist())) > 5  # random order over the split, not one class

    again = data.build_loaders(make_cfg(name="digits", calib_size=100), seed=0)
    assert torch.equal(collect(again.calib)[0], calib_x)
    other = data.build_loaders(make_cfg(name="digits", calib_size=100), seed=1)
    assert not torch.equal(collect(other.calib)[0], calib_x)


def test_digits_train_shuffle_is_seeded():
    first = [next(iter(data.build_loaders(make_cfg(name="digits"), seed=s).train))[1] for s in (3, 3, 4)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_digits_limits(digits_loaders):
    L = data.build_loaders(make_cfg(name="digits", limit_train=50, limit_test=20, calib_size=512), seed=0)
    assert (len(L.train.dataset), len(L.calib.dataset), len(L.test.dataset)) == (50, 50, 20)
    full_test_x, _ = collect(digits_loaders.test)
    assert torch.equal(collect(L.test)[0], full_test_x[:20])
    train_images = {img.numpy().tobytes() for img in collect(L.train)[0]}
    assert {img.numpy().tobytes() for img in collect(L.calib)[0]} == train_images


def test_digits_crop_flip_changes_train_images_only():
    torch.manual_seed(0)
    L = data.build_loaders(make_cfg(name="digits", augment="crop_flip"), seed=0)
    plain = L.calib.dataset.dataset[0][0]  # train split, test-time transform
    augmented = [L.train.dataset[0][0] for _ in range(10)]
    assert all(a.shape == plain.shape for a in augmented)
    assert any(not torch.equal(a, plain) for a in augmented)


def test_cutout_zeroes_one_clipped_square_in_every_channel():
    torch.manual_seed(0)
    for _ in range(20):
        out = data.Cutout(8)(torch.ones(3, 32, 32))
        holes = out == 0
        assert torch.equal(holes[0], holes[1]) and torch.equal(holes[0], holes[2])
        rows, cols = holes[0].any(1).sum(), holes[0].any(0).sum()
        assert 4 <= rows <= 8 and 4 <= cols <= 8 and holes[0].sum() == rows * cols


def test_config_errors():
    with pytest.raises(SnnconvError, match="data.name"):
        data.build_loaders(make_cfg(name="mnist"))
    with pytest.raises(SnnconvError, match="data.augment"):
        data.build_loaders(make_cfg(name="digits", augment="autoaugment"))
    with pytest.raises(SnnconvError, match="data.num_classes=100"):
        data.build_loaders(make_cfg(name="digits", num_classes=100))
    with pytest.raises(SnnconvError, match="data.mean"):
        data.build_loaders(make_cfg(name="digits", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]))


# ---------------------------------------------------------------------------------------------------- CIFAR


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch):
    """Six tiny CIFAR-10 batches on disk; returns (root, train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_x, train_y, train_list = [], [], []
    for i in range(1, 6):
        x, y = cifar_images(rng, 4), rng.integers(0, 10, 4).tolist()
        md5 = write_pickle(folder / f"data_batch_{i}", {"data": x, "labels": y, "batch_label": f"batch {i}"})
        train_x.append(x)
        train_y.extend(y)
        train_list.append([f"data_batch_{i}", md5])
    test_x, test_y = cifar_images(rng, 6), [3, 1, 4, 1, 5, 9]
    test_md5 = write_pickle(folder / "test_batch", {"data": test_x, "labels": test_y})
    meta_md5 = write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    # torchvision verifies the md5 of every CIFAR file. These synthetic files cannot match the published sums, so
    # the test points the class's checksum table at the sums of the files it just wrote; the loading code stays
    # torchvision's own (integrity check, unpickling, HWC conversion, PIL items).
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", test_md5]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": meta_md5})
    return tmp_path, np.concatenate(train_x), train_y, test_x, test_y


def cifar_cfg(root, name="cifar10", **overrides):
    settings = dict(name=name, root=str(root), num_classes=10, in_chans=3, mean=RGB_MEAN, std=RGB_STD)
    return make_cfg(**{**settings, **overrides})


def as_chw(flat):
    return torch.from_numpy(flat).float().view(-1, 3, 32, 32) / 255


def test_cifar10_round_trip(cifar10_root):
    root, train_x, train_y, test_x, test_y = cifar10_root
    L = data.build_loaders(cifar_cfg(root, calib_size=8, batch_size=4, test_batch_size=4, augment="none"))
    assert (L.num_classes, L.in_chans) == (10, 3)
    assert (len(L.train.dataset), len(L.calib.dataset), len(L.test.dataset)) == (20, 8, 6)

    images, labels = collect(L.test)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    torch.testing.assert_close(denormalise(images, RGB_MEAN, RGB_STD), as_chw(test_x), atol=1e-6, rtol=0)
    assert labels.tolist() == test_y

    calib_x, calib_y = collect(L.calib)
    expected = as_chw(train_x)
    for img, label in zip(denormalise(calib_x, RGB_MEAN, RGB_STD), calib_y):
        match = (expected - img).abs().flatten(1).amax(1) < 1e-6
        assert match.sum() == 1 and train_y[int(match.nonzero())] == label


def test_cifar10_train_autoaugment_and_cutout(cifar10_root):
    root, *_ = cifar10_root
    torch.manual_seed(0)
    L = data.build_loaders(cifar_cfg(root, calib_size=4, batch_size=20, augment="autoaugment", cutout=16))
    images, labels = next(iter(L.train))
    assert images.shape == (20, 3, 32, 32) and labels.dtype == torch.int64
    hole = (images == 0).all(1)  # Cutout zeroes all channels after normalisation: at least an 8×8 corner
    assert (hole.flatten(1).sum(1) >= 64).all()


def test_cifar_missing_root_fails_fast_with_one_line(tmp_path, monkeypatch):
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno 113] No route to host")

    monkeypatch.setattr(datasets.cifar, "download_and_extract_archive", no_network)
    root = tmp_path / "nothing"
    start = time.monotonic()
    with pytest.raises(SnnconvError) as excinfo:
        data.build_loaders(cifar_cfg(root, name="cifar100", num_classes=100, download=True))
    assert time.monotonic() - start < 10
    assert_one_line_error(excinfo, root)
    assert "CIFAR-100" in str(excinfo.value) and "cifar-100-python" in str(excinfo.value)
    assert "No route to host" in str(excinfo.value) and len(calls) == 1

    with pytest.raises(SnnconvError) as excinfo:
        data.build_loaders(cifar_cfg(root, download=False))
    assert_one_line_error(excinfo, root)
    assert "cifar-10-batches-py" in str(excinfo.value) and len(calls) == 1  # no download attempted


def test_cifar100_round_trip(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_x, test_x = cifar_images(rng, 10), cifar_images(rng, 5)
    train_y, test_y = rng.integers(0, 100, 10).tolist(), [99, 0, 42, 7, 42]
    coarse = {"coarse_labels": [0] * 10}
    train_md5 = write_pickle(folder / "train", {"data": train_x, "fine_labels": train_y, **coarse})
    test_md5 = write_pickle(folder / "test", {"data": test_x, "fine_labels": test_y, "coarse_labels": [0] * 5})
    names = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    meta_md5 = write_pickle(folder / "meta", names)
    # Checksums of the files written above, in place of the published ones (see cifar10_root).
    monkeypatch.setattr(datasets.CIFAR100, "train_list", [["train", train_md5]])
    monkeypatch.setattr(datasets.CIFAR100, "test_list", [["test", test_md5]])
    monkeypatch.setattr(datasets.CIFAR100, "meta", {**datasets.CIFAR100.meta, "md5": meta_md5})

    mean, std = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]
    cfg = cifar_cfg(tmp_path, name="cifar100", num_classes=100, mean=mean, std=std, calib_size=3)
    L = data.build_loaders(cfg)
    assert L.num_classes == 100 and len(L.calib.dataset) == 3
    images, labels = collect(L.test)
    torch.testing.assert_close(denormalise(images, mean, std), as_chw(test_x), atol=1e-6, rtol=0)
    assert labels.tolist() == test_y
    assert sorted(collect(L.train)[1].tolist()) == sorted(train_y)


# ---------------------------------------------------------------------------------------------------- ImageNet

COLOURS = {"n01440764": (200, 30, 10), "n01443537": (10, 60, 250)}  # class folder → solid RGB colour


@pytest.fixture
def imagenet_root(tmp_path):
    write_imagefolder(tmp_path, COLOURS)
    return tmp_path


def test_imagenet_folder(imagenet_root):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    sizes = dict(img_size=32, batch_size=6, test_batch_size=6, calib_size=4)
    cfg = make_cfg(name="imagenet", root=str(imagenet_root), num_classes=2, in_chans=3, augment="imagenet", **sizes)
    cfg.mean, cfg.std = mean, std
    L = data.build_loaders(cfg)
    assert (L.num_classes, L.in_chans) == (2, 3)
    images, labels = collect(L.test)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]  # sorted wnids
    pixels = denormalise(images, mean, std)
    for img, label in zip(pixels, labels):
        colour = torch.tensor(COLOURS[sorted(COLOURS)[label]], dtype=torch.float32) / 255
        torch.testing.assert_close(img, colour.view(3, 1, 1).expand(3, 32, 32), atol=1 / 255, rtol=0)
    train_images, train_labels = next(iter(L.train))
    assert train_images.shape == (6, 3, 32, 32) and sorted(train_labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert collect(L.calib)[0].shape == (4, 3, 32, 32)


def test_imagenet_missing_root(tmp_path, imagenet_root):
    root = tmp_path / "elsewhere"
    with pytest.raises(SnnconvError) as excinfo:
        data.build_loaders(make_cfg(name="imagenet", root=str(root), num_classes=2, in_chans=3))
    assert_one_line_error(excinfo, root)
    assert "<root>/train/<wnid>" in str(excinfo.value)
    with pytest.raises(SnnconvError, match="data.num_classes=1000"):
        data.build_loaders(make_cfg(name="imagenet", root=str(imagenet_root), num_classes=1000, in_chans=3))


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST


def idx_bytes(array):
    """IDX (big-endian) bytes: magic 2051 + [n, rows, cols] for uint8 images, magic 2049 + [n] for uint8 labels."""
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture
def fake_debian(tmp_path, monkeypatch):
    """A Debian-like dir with tiny gzipped idx files, searched instead of /usr/share/datasets/fashion-mnist."""
    rng = np.random.default_rng(2)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 0, 3, 3, 7], dtype=np.uint8),
    }
    debian = tmp_path / "debian"
    debian.mkdir()
    for name, array in arrays.items():
        (debian / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    monkeypatch.setattr(data, "FASHION_MNIST_SEARCH_DIRS", [str(tmp_path / "absent"), str(debian)])
    return arrays


def fashion_cfg(root, **overrides):
    return make_cfg(name="fashion_mnist", root=str(root), mean=[0.2860], std=[0.3530], **overrides)


def test_fashion_mnist_unpacks_debian_files(tmp_path, fake_debian):
    root = tmp_path / "data"
    L = data.build_loaders(fashion_cfg(root, calib_size=5, test_batch_size=5))
    raw = root / "FashionMNIST" / "raw"
    for name, array in fake_debian.items():
        assert (raw / name).read_bytes() == idx_bytes(array)
    assert (L.num_classes, L.in_chans) == (10, 1)
    assert (len(L.train.dataset), len(L.calib.dataset), len(L.test.dataset)) == (12, 5, 5)

    images, labels = collect(L.test)
    assert images.shape == (5, 1, 32, 32)
    pixels = denormalise(images, [0.2860], [0.3530])
    expected = torch.from_numpy(fake_debian["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    torch.testing.assert_close(pixels[..., 2:30, 2:30], expected, atol=1e-6, rtol=0)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert pixels[..., border].abs().max() < 1e-6  # 2 px zero padding
    assert labels.tolist() == [9, 0, 3, 3, 7]
    assert sorted(collect(L.train)[1].tolist()) == sorted(fake_debian["train-labels-idx1-ubyte"].tolist())


def test_fashion_mnist_concurrent_unpacks_do_not_collide(tmp_path, fake_debian):
    """make -j2 reproduce-cpu starts two runs on a fresh data root at once: both must find complete files."""
    import threading

    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    errors = []

    def unpack():
        try:
            data._unpack_debian_fashion_mnist(raw)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=unpack) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for name, array in fake_debian.items():
        assert (raw / name).read_bytes() == idx_bytes(array)
    assert not list(raw.glob("*.partial"))


def test_fashion_mnist_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SEARCH_DIRS", [str(tmp_path / "absent")])
    root = tmp_path / "data"
    with pytest.raises(SnnconvError) as excinfo:
        data.build_loaders(fashion_cfg(root, download=False))
    assert_one_line_error(excinfo, root)
    assert "apt-get install dataset-fashion-mnist" in str(excinfo.value)

    def no_network(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://mirror/, got:\nno route\n")

    monkeypatch.setattr(datasets.FashionMNIST, "download", no_network)
    with pytest.raises(SnnconvError) as excinfo:
        data.build_loaders(fashion_cfg(root, download=True))
    assert_one_line_error(excinfo, root)
    assert "download failed: no route" in str(excinfo.value)


DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_real_debian_files(tmp_path):
    L = data.build_loaders(fashion_cfg(tmp_path, limit_test=0, test_batch_size=1000))
    assert (len(L.train.dataset), len(L.test.dataset)) == (60000, 10000)
    test_labels = collect(L.test)[1]
    assert torch.equal(torch.bincount(test_labels), torch.full((10,), 1000))
    assert next(iter(L.train))[0].shape == (128, 1, 32, 32)
