"""Data: digits, Fashion-MNIST, CIFAR-10/100 and ImageNet as train / calib / test DataLoaders.

Every loader yields (images float32 [B, C, H, W] normalised with data.mean / data.std, labels int64 [B]).
`calib` is a fixed, seeded subset of the TRAIN split with the test-time transform; the test split is used for
nothing but final accuracy. Missing files raise a one-line SnnconvError that names data.root and the fix.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from snnconv import SnnconvError

# Where Debian's dataset-fashion-mnist puts the four original *-idx?-ubyte.gz files (tests monkeypatch this).
FASHION_MNIST_SEARCH_DIRS = ["/usr/share/datasets/fashion-mnist"]
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DOWNLOAD_TIMEOUT_S = 20.0  # per socket operation: a dead network fails in seconds, slow downloads still work
AUGMENTS = {
    "digits": ("none", "crop_flip"),
    "fashion_mnist": ("none", "crop_flip"),
    "cifar10": ("none", "crop_flip", "autoaugment"),
    "cifar100": ("none", "crop_flip", "autoaugment"),
    "imagenet": ("none", "imagenet"),
}


DATASETS: dict[str, Callable[[Any], Splits]] = {}  # data.name -> builder(data_cfg) -> Splits


def register_dataset(name: str):
    """Register a split builder `fn(data_cfg) -> Splits` as `data=<name>` (the registry feeds validation)."""

    def deco(fn):
        DATASETS[name] = fn
        return fn

    return deco


@dataclass
class Loaders:
    train: DataLoader  # training split, augmented per data.augment, shuffled (seeded), drop_last=False
    calib: DataLoader  # fixed seeded subset (calib_size) of the TRAIN split, test-time transform, in order
    test: DataLoader  # test split, test-time transform, in order
    num_classes: int
    in_chans: int


class Splits(NamedTuple):
    train: Dataset  # training split, train-time transform
    train_eval: Dataset  # the same images, test-time transform (calibration source)
    test: Dataset  # test split, test-time transform
    num_classes: int
    in_chans: int


class Cutout:
    """Zero one size×size square (clipped at the borders) at a random centre of a [C, H, W] tensor.

    DeVries & Taylor (2017), as QCFS/COS use it: applied after normalisation, one hole, same for all channels.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        out = img.clone()
        out[..., max(cy - half, 0) : min(cy + half, h), max(cx - half, 0) : min(cx + half, w)] = 0
        return out

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


class TensorImages(Dataset):
    """In-memory images [N, C, H, W] (uint8 0..255 or float in [0, 1]) and labels int64 [N].

    Item i is (transform(image as float32 [C, H, W] in [0, 1]), label): no PIL round trip, fast on few CPUs.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x
        return self.transform(x), self.labels[i]


class WithTransform(Dataset):
    """`dataset` (items (PIL image, label)) with `transform` applied to the image."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        img, label = self.dataset[i]
        return self.transform(img), label


def cpu_count() -> int:
    """CPUs this process may run on (the SLURM / cgroup allotment where the OS exposes it, not the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def resolve_num_workers(num_workers: int, name: str, device: torch.device | str | None) -> int:
    """data.num_workers, or for -1 (auto): 0 for digits (held in memory, nothing to decode) and on CPU devices
    (workers would take cores from the compute threads), else min(8, CPUs - 1) loader processes."""
    if num_workers >= 0:
        return int(num_workers)
    if name == "digits" or device is None or torch.device(device).type == "cpu":
        return 0
    return max(0, min(8, cpu_count() - 1))


def build_loaders(data_cfg: Any, seed: int = 42, device: torch.device | str | None = None) -> Loaders:
    """Train / calib / test loaders for `data_cfg` (a DataConfig node), feeding `device` (None = CPU).

    `seed` fixes the train shuffling order and which train images form the calib subset. Loader processes:
    `resolve_num_workers`; pinned host memory when feeding CUDA; the training loader keeps its workers between
    epochs (persistent_workers), the others start them per pass.
    """
    name = data_cfg.name
    if name not in DATASETS:
        raise SnnconvError(f"data.name={name!r} is not one of {', '.join(DATASETS)}")
    if data_cfg.augment not in AUGMENTS[name]:
        raise SnnconvError(
            f"data.augment={data_cfg.augment!r} is not supported for {name}; use one of {', '.join(AUGMENTS[name])}"
        )
    if len(data_cfg.mean) != len(data_cfg.std) or len(data_cfg.mean) not in (1, data_cfg.in_chans):
        raise SnnconvError(
            f"data.mean / data.std need 1 or data.in_chans={data_cfg.in_chans} values, "
            f"got {list(data_cfg.mean)} / {list(data_cfg.std)}"
        )
    splits = DATASETS[name](data_cfg)
    for key, found in (("num_classes", splits.num_classes), ("in_chans", splits.in_chans)):
        if getattr(data_cfg, key) != found:
            raise SnnconvError(
                f"data.{key}={getattr(data_cfg, key)} but {name} under data.root has {found}; set data.{key}={found}"
            )

    train, train_eval, test = splits.train, splits.train_eval, splits.test
    if data_cfg.limit_train > 0:
        train, train_eval = _first(train, data_cfg.limit_train), _first(train_eval, data_cfg.limit_train)
    if data_cfg.limit_test > 0:
        test = _first(test, data_cfg.limit_test)
    order = torch.randperm(len(train_eval), generator=torch.Generator().manual_seed(seed))
    calib_idx = order[: data_cfg.calib_size].tolist()  # random order: calib batches mix classes

    workers = resolve_num_workers(int(data_cfg.num_workers), name, device)
    cuda = device is not None and torch.device(device).type == "cuda"
    common = {"num_workers": workers, "pin_memory": cuda}
    return Loaders(
        train=DataLoader(
            train,
            batch_size=data_cfg.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            drop_last=False,
            persistent_workers=workers > 0,
            **common,
        ),
        calib=DataLoader(Subset(train_eval, calib_idx), batch_size=data_cfg.batch_size, **common),
        test=DataLoader(test, batch_size=data_cfg.test_batch_size, **common),
        num_classes=splits.num_classes,
        in_chans=splits.in_chans,
    )


def _first(dataset: Dataset, n: int) -> Dataset:
    return Subset(dataset, range(min(n, len(dataset))))


def _post_tensor(cfg: Any, train: bool) -> list[Callable]:
    """Normalize, then (train only) Cutout: the steps every pipeline ends with, on a float [C, H, W] tensor."""
    steps: list[Callable] = [T.Normalize(list(cfg.mean), list(cfg.std))]
    if train and cfg.cutout > 0:
        steps.append(Cutout(cfg.cutout))
    return steps


def _tensor_splits(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    cfg: Any,
    num_classes: int,
) -> Splits:
    """Splits over in-memory images [N, C, H, W]; crop_flip = RandomCrop(pad 4, zero fill) + horizontal flip."""
    aug = (
        [T.RandomCrop(cfg.img_size, padding=4), T.RandomHorizontalFlip()]
        if cfg.augment == "crop_flip"
        else []
    )
    test_tf = T.Compose(_post_tensor(cfg, train=False))
    return Splits(
        train=TensorImages(train_x, train_y, T.Compose(aug + _post_tensor(cfg, train=True))),
        train_eval=TensorImages(train_x, train_y, test_tf),
        test=TensorImages(test_x, test_y, test_tf),
        num_classes=num_classes,
        in_chans=train_x.shape[1],
    )


@register_dataset("digits")
def _digits(cfg: Any) -> Splits:
    """scikit-learn digits: 1,797 images 8×8 (0..16) → [0, 1], bilinear to img_size; stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(cfg.img_size, cfg.img_size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.2, stratify=digits.target, random_state=0
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return _tensor_splits(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], cfg, 10)


def _root_desc(root: str) -> str:
    full = os.path.abspath(root)
    return f"data.root={root}" + ("" if full == str(root) else f" ({full})")


def _short(exc: BaseException) -> str:
    """The last non-empty line of an exception's message (torchvision's are multi-line), at most 160 chars."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:160]


@contextlib.contextmanager
def _download_timeout() -> Iterator[None]:
    """torchvision's urlopen has no timeout: bound each socket operation so a blackholed network fails fast."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _missing_fashion_files(raw: Path) -> list[str]:
    return [name for name in FASHION_MNIST_FILES if not (raw / name).is_file()]


def _unpack_debian_fashion_mnist(raw: Path) -> None:
    """gunzip missing raw files from the first FASHION_MNIST_SEARCH_DIRS entry that has `<name>.gz`."""
    for name in _missing_fashion_files(raw):
        sources = [Path(d) / f"{name}.gz" for d in FASHION_MNIST_SEARCH_DIRS]
        source = next((s for s in sources if s.is_file()), None)
        if source is None:
            continue
        partial = None
        try:
            raw.mkdir(parents=True, exist_ok=True)
            # a private partial file per caller: parallel runs (make -j2 reproduce-cpu) may unpack at once
            fd, partial = tempfile.mkstemp(dir=raw, prefix=f".{name}.", suffix=".partial")
            with gzip.open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(partial, raw / name)
        except OSError as exc:
            if partial:
                Path(partial).unlink(missing_ok=True)
            raise SnnconvError(
                f"cannot unpack {source} into {raw} ({_short(exc)}): set data.root to a writable dir"
            ) from exc


@register_dataset("fashion_mnist")
def _fashion_mnist(cfg: Any) -> Splits:
    """Fashion-MNIST 28×28 uint8 → zero-padded to 32×32 (img_size 32) or resized; held in memory as uint8."""
    raw = Path(cfg.root) / "FashionMNIST" / "raw"
    _unpack_debian_fashion_mnist(raw)
    reason = "files absent"
    if _missing_fashion_files(raw) and cfg.download:
        try:
            with _download_timeout():
                datasets.FashionMNIST(cfg.root, train=True, download=True)
        except Exception as exc:  # no route, DNS, checksum, HTTP error: all mean "provide the files"
            reason = f"download failed: {_short(exc)}"
    missing = _missing_fashion_files(raw)
    if missing:
        raise SnnconvError(
            f"Fashion-MNIST not found under {_root_desc(cfg.root)} ({reason}; missing {raw / missing[0]}): "
            f"apt-get install dataset-fashion-mnist, or put the files under {raw}, or set data.root=..."
        )
    train = datasets.FashionMNIST(cfg.root, train=True, download=False)
    test = datasets.FashionMNIST(cfg.root, train=False, download=False)
    train_x, test_x = _fit_mnist(train.data, cfg.img_size), _fit_mnist(test.data, cfg.img_size)
    return _tensor_splits(train_x, train.targets, test_x, test.targets, cfg, len(train.classes))


def _fit_mnist(data: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 28, 28] → uint8 [N, 1, size, size]: 2 px zero padding for 32, antialiased resize otherwise."""
    x = data.unsqueeze(1)
    if size == 32:
        return F.pad(x, (2, 2, 2, 2))
    return x if size == 28 else TF.resize(x, [size, size], antialias=True)


def _load_cifar(cls: type, label: str, cfg: Any) -> tuple[Dataset, Dataset]:
    """The real torchvision CIFAR datasets (PIL items): download=False first, then download=True if allowed."""
    try:
        return cls(cfg.root, train=True, download=False), cls(cfg.root, train=False, download=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted" (absent files or md5 mismatch)
        reason = "files absent or corrupted"
    if cfg.download:
        try:
            with _download_timeout():
                return cls(cfg.root, train=True, download=True), cls(cfg.root, train=False, download=False)
        except Exception as exc:  # no route, DNS, checksum, HTTP error: all mean "provide the files"
            reason = f"download failed: {_short(exc)}"
    raise SnnconvError(
        f"{label} not found under {_root_desc(cfg.root)} ({reason}): put {cls.base_folder}/ (torchvision's "
        f"python-version files) there, or run once with network access and data.download=true"
    )


def _cifar(cfg: Any, cls: type, label: str) -> Splits:
    """CIFAR train: [crop 32 pad 4 + flip [+ AutoAugment]] → ToTensor → Normalize [→ Cutout].

    Test (and calib): ToTensor → Normalize.
    """
    if cfg.img_size != 32:
        raise SnnconvError(f"data.img_size={cfg.img_size} but {label} images are 32x32; set data.img_size=32")
    train, test = _load_cifar(cls, label, cfg)
    aug: list[Callable] = []
    if cfg.augment in ("crop_flip", "autoaugment"):
        aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if cfg.augment == "autoaugment":
        aug.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
    return _pil_splits(train, test, aug, [], cfg)


def _pil_splits(train: Dataset, test: Dataset, aug: list[Callable], test_pre: list[Callable], cfg: Any) -> Splits:
    """Splits over PIL-image datasets: train = aug -> ToTensor -> Normalize [-> Cutout]; test and calib =
    test_pre -> ToTensor -> Normalize. RGB, classes from `train.classes`."""
    test_tf = T.Compose([*test_pre, T.ToTensor(), *_post_tensor(cfg, train=False)])
    return Splits(
        train=WithTransform(train, T.Compose([*aug, T.ToTensor(), *_post_tensor(cfg, train=True)])),
        train_eval=WithTransform(train, test_tf),
        test=WithTransform(test, test_tf),
        num_classes=len(train.classes),
        in_chans=3,
    )


@register_dataset("imagenet")
def _imagenet(cfg: Any) -> Splits:
    """ImageFolder <root>/train and <root>/val.

    Train: RandomResizedCrop(img_size) + flip; test (and calib): Resize(img_size·256/224) + CenterCrop(img_size).
    """
    root = Path(cfg.root)
    try:
        train, test = datasets.ImageFolder(root / "train"), datasets.ImageFolder(root / "val")
    except OSError as exc:  # missing dir, or no class folder / image files
        raise SnnconvError(
            f"ImageNet not found under {_root_desc(cfg.root)} ({_short(exc)}): expected the ImageFolder layout "
            f"<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (val sorted into class folders)"
        ) from exc
    if train.classes != test.classes:
        raise SnnconvError(
            f"ImageNet under {_root_desc(cfg.root)}: train/ has {len(train.classes)} class folders, val/ has "
            f"{len(test.classes)} different ones; both need the same <wnid> folders"
        )
    size = cfg.img_size
    resize_crop = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
    aug = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if cfg.augment == "imagenet" else resize_crop
    return _pil_splits(train, test, aug, resize_crop, cfg)


register_dataset("cifar10")(functools.partial(_cifar, cls=datasets.CIFAR10, label="CIFAR-10"))
register_dataset("cifar100")(functools.partial(_cifar, cls=datasets.CIFAR100, label="CIFAR-100"))
