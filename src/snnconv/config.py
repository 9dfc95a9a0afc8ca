"""Typed config schema, registered in Hydra's ConfigStore, plus the value checks a type cannot express.

Every key a user can set is declared in a dataclass, so `data.bogus=1` or `T=4` fails when the config is composed
(OmegaConf type checks; run.py turns Hydra's report into one line naming the closest valid key), and `'T=[0]'`,
`ann.L=0` or a key added with `+data.bogus=1` (which Hydra's own message advises) fail in :func:`validate` before
any work starts. The `method`
group's schemas are not here: each method module owns its config dataclass (`snnconv.methods.registry`), stored as
`method/<name>_schema` and listed first in `conf/method/<name>.yaml`; likewise `snnconv.finetune.FinetuneConfig`
for the `finetune` group (`finetune/finetune_schema`). Choices come from the registries (models,
ANN sources, methods), never from a second list.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from snnconv import SnnconvError
from snnconv.checkpoints import FORMATS


def require(ok: bool, key: str, value: Any, valid: str, hint: str = "") -> None:
    """Raise SnnconvError `key=value is outside its range: valid[; hint]` unless `ok`."""
    if not ok:
        raise SnnconvError(f"{key}={value!r} is outside its range: {valid}" + (f"; {hint}" if hint else ""))


@dataclass
class DataConfig:
    name: str = "digits"  # digits | fashion_mnist | cifar10 | cifar100 | imagenet
    root: str = "data"  # where files are found (or downloaded to, when download=true)
    download: bool = True  # try torchvision's download when files are absent (CIFAR only)
    num_classes: int = 10
    in_chans: int = 1
    img_size: int = 32
    batch_size: int = 128
    test_batch_size: int = 200
    num_workers: int = -1  # loader processes; -1 = auto (0 on CPU devices and for digits, else min(8, CPUs - 1))
    calib_size: int = 1024  # images drawn (fixed seed) from the TRAIN split for thresholds / calibration
    augment: str = "none"  # none | crop_flip | autoaugment (CIFAR: crop+flip+AutoAugment) | imagenet
    cutout: int = 0  # Cutout hole size in px (0 = off)
    limit_train: int = 0  # >0: use only the first N training images (debug / smoke tests)
    limit_test: int = 0  # >0: use only the first N test images
    mean: List[float] = field(default_factory=lambda: [0.5])
    std: List[float] = field(default_factory=lambda: [0.5])

    def check(self) -> None:
        """Ranges of the data keys (any object with these attributes, e.g. the composed DictConfig node)."""
        require(self.img_size >= 1, "data.img_size", self.img_size, "must be >= 1 (pixels; images are resized)")
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be >= 1")
        require(self.test_batch_size >= 1, "data.test_batch_size", self.test_batch_size, "must be >= 1")
        require(self.num_workers >= -1, "data.num_workers", self.num_workers,
                "must be >= 0 loader processes, or -1 for automatic")
        require(self.calib_size >= 0, "data.calib_size", self.calib_size, "must be >= 0 training images")
        require(self.cutout >= 0, "data.cutout", self.cutout, "must be >= 0 px (0 = off)")
        require(self.limit_train >= 0, "data.limit_train", self.limit_train, "must be >= 0 (0 = all images)")
        require(self.limit_test >= 0, "data.limit_test", self.limit_test, "must be >= 0 (0 = all images)")
        require(self.num_classes >= 2, "data.num_classes", self.num_classes, "must be >= 2")
        require(self.in_chans >= 1, "data.in_chans", self.in_chans, "must be >= 1")
        require(all(v > 0 for v in self.std), "data.std", list(self.std), "must be > 0 in every channel",
                "inputs are divided by it")


@dataclass
class ArchConfig:
    name: str = "resnet20"  # a name in snnconv.models' registry
    width: float = 1.0  # channel multiplier (VGG16 also scales its 4096-wide classifier)
    stem: str = "cifar"  # resnet34 only: imagenet (7x7/2 conv + avg-pool) | cifar (3x3/1, QCFS/COS checkpoints) | deep (SNNC)
    dropout: float = 0.0
    maxpool: str = "keep"  # keep (refused after a spiking layer) | avg (every MaxPool2d -> AvgPool2d, same geometry)
    model_name: str = ""  # arch=torchvision | timm: the library's model name (resnet18, resnet34, vgg16_bn, ...)
    pretrained: bool = False  # arch=torchvision | timm: the library's published weights (downloaded to its cache)

    def check(self) -> None:
        require(self.width > 0, "arch.width", self.width, "must be > 0 (a channel multiplier, e.g. 0.25)")
        require(0 <= self.dropout < 1, "arch.dropout", self.dropout, "must be in [0, 1)")


@dataclass
class AnnConfig:
    name: str = "qcfs"  # relu | qcfs | rts
    L: int = 4  # qcfs: quantisation levels
    init_threshold: float = 8.0  # qcfs: initial trainable clip value lambda
    percentile: float = 99.99  # relu: SNN threshold = this percentile of each layer's calibration activations (100 = max)
    threshold: float = 1.0  # rts: clip value of the threshold ReLU (Deng & Gu: 1 CIFAR-10, 2 CIFAR-100, 3 ImageNet)
    rts_shift: str = "initial"  # rts SNN shift: initial (v0 = theta/2, T-independent) | per_step (theta/(2T) each step)
    threshold_granularity: str = "layer"  # relu: one threshold per layer | channel (per output channel)
    checkpoint: Optional[str] = None  # load this state dict instead of training / the cache
    checkpoint_format: str = "auto"  # key layout of ann.checkpoint: auto | snnconv | qcfs | cos | qcfs_old | snnc | torchvision | timm
    trust_checkpoint: bool = False  # allow unpickling a whole pickled model (runs the file's code)

    def check(self) -> None:
        require(self.L >= 1, "ann.L", self.L, "must be >= 1 quantisation level")
        require(self.init_threshold > 0, "ann.init_threshold", self.init_threshold,
                "must be > 0 (the initial QCFS threshold lambda)", "the papers use 8.0, the CPU presets 2.0")
        require(0 < self.percentile <= 100, "ann.percentile", self.percentile, "must be in (0, 100] (100 = max)")
        require(self.threshold > 0, "ann.threshold", self.threshold, "must be > 0 (the RTS clip value theta)")


@dataclass
class TrainConfig:
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    threshold_weight_decay: bool = True  # QCFS papers decay lambda too
    limit_batches: int = 0  # >0: stop each epoch after N batches (debug)
    cache: bool = True  # reuse outputs/checkpoints/<hash>.pt when the same ANN was trained before
    save_every: int = 1  # epochs between resume checkpoints next to the cache entry (0 = none; needs cache=true)
    amp: bool = False  # bf16 autocast on CUDA (fp32 weights); a no-op, said in one line, on other devices
    channels_last: bool = False  # NHWC weights and inputs while training (faster convolutions on tensor cores)
    sync_bn: bool = False  # several ranks: BatchNorm statistics over the global batch (torch SyncBatchNorm, CUDA only)

    def check(self) -> None:
        require(self.epochs >= 0, "train.epochs", self.epochs, "must be >= 0 (0 = keep the initial weights)")
        require(self.lr > 0, "train.lr", self.lr, "must be > 0")
        require(0 <= self.momentum < 1, "train.momentum", self.momentum, "must be in [0, 1)")
        require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        require(0 <= self.label_smoothing < 1, "train.label_smoothing", self.label_smoothing, "must be in [0, 1)")
        require(self.limit_batches >= 0, "train.limit_batches", self.limit_batches, "must be >= 0 (0 = all)")
        require(self.save_every >= 0, "train.save_every", self.save_every,
                "must be >= 0 epochs (0 = no resume checkpoints)")


@dataclass
class SnnConfig:
    time_chunk: int = 0  # time steps folded into the batch per call; 0 = auto (CPU: 1; CUDA: the largest that fits)
    eval_batches: int = 0  # >0: evaluate only N test batches
    memory_fraction: float = 0.8  # CUDA: share of the free device memory a simulation may use (snnconv.snn.memory)
    memory_budget_gb: float = 0.0  # >0: the simulation's memory budget in GiB on any device (overrides the fraction)

    def check(self) -> None:
        require(self.time_chunk >= 0, "snn.time_chunk", self.time_chunk, "must be >= 0 (0 = auto)")
        require(self.eval_batches >= 0, "snn.eval_batches", self.eval_batches, "must be >= 0 (0 = all batches)")
        require(0 < self.memory_fraction <= 1, "snn.memory_fraction", self.memory_fraction, "must be in (0, 1]")
        require(self.memory_budget_gb >= 0, "snn.memory_budget_gb", self.memory_budget_gb,
                "must be >= 0 GiB (0 = from the device)")


@dataclass
class NumericsConfig:
    allow_tf32: bool = False  # TF32 matmuls / convolutions (Ampere+); off: fp32 spikes at near-ties stay put
    deterministic: bool = False  # deterministic cuDNN kernels, no autotuning (cudnn.benchmark); see snnconv.device


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    mode: str = "offline"  # online | offline | disabled
    project: str = "snnconv"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    ann: AnnConfig = field(default_factory=AnnConfig)
    method: Any = MISSING  # a method's own schema (method/<name>_schema), chosen in the defaults list
    finetune: Any = MISSING  # snnconv.finetune.FinetuneConfig (finetune/finetune_schema): none | localzo | surrogate
    train: TrainConfig = field(default_factory=TrainConfig)
    snn: SnnConfig = field(default_factory=SnnConfig)
    numerics: NumericsConfig = field(default_factory=NumericsConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    T: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    stats: bool = True  # spikes, SOPs, firing rates, conversion error and energy per T (snnconv.stats)
    energy: str = "fp32-45nm"  # E_MAC / E_AC preset of the energy columns: fp32-45nm | fp16 | int8
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    checkpoint_dir: str = "outputs/checkpoints"
    task_name: str = "run"
    output_dir: Optional[str] = None  # set by the runner (Hydra's run dir); tests may set it
    experiment: Optional[str] = None
    debug: Optional[str] = None
    extra: Any = None  # free-form notes carried into results.json


def _start_time(pattern: str) -> str:
    from snnconv import distributed  # imports torch: only when Hydra resolves its run directory

    return distributed.start_time().strftime(pattern)


# `${start_time:%Y-...}` in conf/config.yaml's hydra.run.dir / hydra.sweep.dir: Hydra's `now`, except that every
# rank of a torchrun / srun launch gets rank 0's time (snnconv.distributed.init broadcasts it), so all ranks use
# one output directory. Registered at import: SLURM tasks of Hydra's submitit launcher unpickle the task function
# (importing this module) without running run.py's module code.
OmegaConf.register_new_resolver("start_time", _start_time, use_cache=True, replace=True)


def register_configs() -> None:
    """Register the schemas so `conf/config.yaml` can list `config_schema` first in its defaults, every
    method's schema for the `method` group (importing the methods registers them) and the `finetune` group's."""
    from snnconv.finetune import register_schema
    from snnconv.methods import load_plugins

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    load_plugins()
    register_schema()


def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values per dotted key; the registered names come from the registries."""
    from snnconv.ann import list_sources
    from snnconv.data import DATASETS
    from snnconv.methods import list_methods
    from snnconv.stats import ENERGY_PRESETS

    return {
        "energy": tuple(ENERGY_PRESETS),
        "data.name": tuple(DATASETS),
        "ann.name": tuple(list_sources()),
        "method.name": tuple(list_methods()),
        **CHOICES,
    }


CHOICES = {
    "ann.rts_shift": ("initial", "per_step"),
    "logger.name": ("none", "wandb"),
    "logger.mode": ("online", "offline", "disabled"),
    "data.augment": ("none", "crop_flip", "autoaugment", "imagenet"),
    "arch.stem": ("cifar", "imagenet", "deep"),
    "arch.maxpool": ("keep", "avg"),
    "ann.threshold_granularity": ("layer", "channel"),
    "ann.checkpoint_format": FORMATS,
}


def _get(cfg: DictConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def unknown_key_message(full_key: str, valid: list[str]) -> str:
    """One line for a key that is not a setting: its closest valid spelling and the valid keys of its section.
    `full_key`: dotted (``data.bogus``); `valid`: the section's setting names. Hydra's own advice for this case
    (``To append to your config use +data.bogus=1``) would add a key that nothing reads."""
    section, _, key = full_key.rpartition(".")
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {section + '.' if section else ''}{close[0]}? " if close else ""
    return (f"{full_key} is not a setting; {hint}{'the settings of ' + section if section else 'top-level settings'}"
            f": {', '.join(valid)} ('python run.py --cfg job' prints them with their values)")


def schema_fields(type_name: str) -> list[str] | None:
    """Setting names of the schema dataclass called `type_name` (e.g. 'DataConfig', 'FTBCConfig'), looked up among
    the schemas in Hydra's ConfigStore and their typed sub-sections (every method and the finetune group register
    theirs); None if there is none."""
    stack: list = [ConfigStore.instance().repo]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
            continue
        node = getattr(item, "node", item)
        kind = OmegaConf.get_type(node)
        if is_dataclass(kind) and kind.__name__ == type_name:
            return [f.name for f in fields(kind)]
        if isinstance(node, DictConfig):
            stack.extend(node._get_node(k) for k in node.keys() if isinstance(node._get_node(k), DictConfig))
    return None


def check_unknown_keys(node: DictConfig, prefix: str = "") -> None:
    """Raise SnnconvError for a key that no schema declares: the `+data.bogus=1` Hydra suggests is accepted at
    composition (it opens the struct flag) and would be silently ignored. Recurses into typed sub-sections."""
    kind = OmegaConf.get_type(node)
    valid = [f.name for f in fields(kind)] if is_dataclass(kind) else None
    for key in node.keys():
        if valid is not None and key not in valid:
            raise SnnconvError(unknown_key_message(f"{prefix}{key}", valid))
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_unknown_keys(child, f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Raise SnnconvError (one line, naming the fix) for values the schema's types cannot refuse."""
    check_unknown_keys(cfg)
    T = list(cfg.T)
    if not T or any(int(t) < 1 for t in T):
        raise SnnconvError(f"T must be a non-empty list of positive ints, got {T}; e.g. 'T=[1,2,4,8]'")
    for key, allowed in choices().items():
        value = _get(cfg, key)
        if value not in allowed:
            raise SnnconvError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    from snnconv.models import list_models

    if cfg.arch.name not in list_models():
        raise SnnconvError(f"arch.name={cfg.arch.name!r} is not a registered model; choose one of {list_models()}")
    if cfg.arch.name in ("torchvision", "timm"):
        from snnconv.models.external import check_model_name

        check_model_name(cfg.arch.name, cfg.arch.model_name)
    for section, schema in (("data", DataConfig), ("arch", ArchConfig), ("ann", AnnConfig), ("train", TrainConfig),
                            ("snn", SnnConfig)):
        schema.check(cfg[section])  # each section's own ranges
    from snnconv.methods import build_method

    method = build_method(cfg.method)  # the method's own checks (MethodConfig.check)
    check_calibration_images(cfg, method.name, *method.calibration_images())
    if "finetune" in cfg:
        from snnconv.finetune import finetune_config

        tune = finetune_config(cfg.finetune)  # FinetuneConfig.check
        if tune.name == "none" and (changed := tune.changed()):
            print(f"warning: {', '.join('finetune.' + k for k in changed)} set, but finetune=none: nothing is "
                  f"fine-tuned (add finetune=localzo or finetune=surrogate)", file=sys.stderr)


def calibration_images_available(data) -> int:
    """Training images the calibration subset holds: data.calib_size, capped by data.limit_train when set."""
    return min(data.calib_size, data.limit_train) if data.limit_train > 0 else data.calib_size


def check_calibration_images(cfg: DictConfig, method: str, batches: int, batch_size: int) -> None:
    """Calibration images are checked only where something uses them: ReLU thresholds (ann=relu) and a method
    whose `calibration_images()` asks for (batches, batch_size) training images; the baseline on a QCFS / RTS
    network needs none, so data.calib_size=0 or a tiny data.limit_train is not refused there."""
    available = calibration_images_available(cfg.data)
    limit = f" (data.limit_train={cfg.data.limit_train} caps it)" if cfg.data.limit_train > 0 else ""
    if cfg.ann.name == "relu" and available < 1:
        raise SnnconvError(f"ann=relu sets its thresholds from calibration images but the calibration subset holds "
                           f"{available}{limit}; set data.calib_size >= 1 (e.g. 1024)")
    if batches * batch_size > available:
        raise SnnconvError(
            f"method={method} calibrates on method.batches={batches} x method.batch_size={batch_size} = "
            f"{batches * batch_size} training images but the calibration subset holds {available}{limit}; raise "
            "data.calib_size or lower method.batches / method.batch_size"
        )


_FITS: dict[tuple, bool] = {}  # (arch key, size) -> whether the network accepts that input size


def check_input_size(cfg: DictConfig) -> None:
    """The network must accept data.img_size: one forward on PyTorch's meta device (shapes only, no memory, no
    compute; 0.1-0.6 s, so it runs once per job in `snnconv.jobs.execute`, not in every `validate`); when it
    fails, the smallest size that works is found the same way and named in the message."""
    if cfg.arch.name in ("torchvision", "timm"):
        return  # built by their own factories (maybe downloading weights): their own errors apply

    import torch

    from snnconv.ann import act_layer
    from snnconv.models import create_model

    key = (cfg.arch.name, cfg.arch.width, cfg.arch.stem, cfg.data.num_classes, cfg.data.in_chans)
    act = act_layer(cfg.ann)

    def fits(size: int) -> bool:
        if (key, size) not in _FITS:
            try:
                with torch.device("meta"), torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = create_model(cfg.arch.name, act_layer=act, num_classes=cfg.data.num_classes,
                                         in_chans=cfg.data.in_chans, img_size=size, width=cfg.arch.width,
                                         stem=cfg.arch.stem).eval()
                    model(torch.empty(2, cfg.data.in_chans, size, size))
                _FITS[(key, size)] = True
            except Exception:
                _FITS[(key, size)] = False
        return _FITS[(key, size)]

    size = int(cfg.data.img_size)
    if fits(size):
        return
    hi = size * 2
    while hi <= 4096 and not fits(hi):
        hi *= 2
    if hi > 4096:
        return  # not a size problem: building the network fails for another reason, reported where it is built
    lo = size  # fits(lo) is False, fits(hi) is True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    raise SnnconvError(
        f"data.img_size={size} is outside its range for arch={cfg.arch.name}: must be >= {hi} (its down-sampling "
        f"leaves no pixels below that); set data.img_size={hi} (images are resized) or choose a smaller network"
    )
