"""Small data sets written in the real on-disk formats: torchvision's CIFAR pickles and an ImageFolder tree."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets


def write_pickle(path: Path, obj) -> str:
    """Real CIFAR files are Python-2 pickles whose str keys torchvision reads (encoding="latin1") as str "data",
    "labels", ...; a Python-3 pickle must therefore use str keys. Returns the file's md5."""
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_images(rng, n: int) -> np.ndarray:
    """uint8 [n, 3072] in CIFAR's row layout (R plane, G plane, B plane, each 32x32 row-major)."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar100(root: Path, monkeypatch, n_train: int = 64, n_test: int = 32, seed: int = 0) -> None:
    """cifar-100-python/{train,test,meta} under root. torchvision verifies every file's md5; synthetic files cannot
    match the published sums, so the class's checksum table is pointed at the files just written (the loading code
    stays torchvision's own)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    sums = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, n).tolist()
        sums[split] = write_pickle(
            folder / split, {"data": cifar_images(rng, n), "fine_labels": labels, "coarse_labels": [0] * n}
        )
    names = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    meta = write_pickle(folder / "meta", names)
    monkeypatch.setattr(datasets.CIFAR100, "train_list", [["train", sums["train"]]])
    monkeypatch.setattr(datasets.CIFAR100, "test_list", [["test", sums["test"]]])
    monkeypatch.setattr(datasets.CIFAR100, "meta", {**datasets.CIFAR100.meta, "md5": meta})


def write_cifar10(root: Path, monkeypatch, per_batch: int = 16, n_test: int = 32, seed: int = 0) -> None:
    """cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} under root (checksums as in write_cifar100)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_list = []
    for i in range(1, 6):
        batch = {"data": cifar_images(rng, per_batch), "labels": rng.integers(0, 10, per_batch).tolist()}
        train_list.append([f"data_batch_{i}", write_pickle(folder / f"data_batch_{i}", batch)])
    test = write_pickle(folder / "test_batch", {"data": cifar_images(rng, n_test), "labels": rng.integers(0, 10, n_test).tolist()})
    meta = write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", test]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": meta})


def write_imagefolder(root: Path, colours: dict[str, tuple[int, int, int]], per_class: int = 3) -> None:
    """root/{train,val}/<wnid>/img<i>.png, solid colours, varying sizes."""
    for split in ("train", "val"):
        for wnid, colour in colours.items():
            (root / split / wnid).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40 + 8 * (i % 3), 48), colour).save(root / split / wnid / f"img{i}.png")
