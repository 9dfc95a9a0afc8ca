"""Typed config schema, registered in Hydra's ConfigStore, plus the value checks a type cannot express.

Every key a user can set is declared in a dataclass, so `data.bogus=1` or `T=4` fails when the config is composed
(OmegaConf type checks), and `'T=[0]'` / `ann.L=0` fail in :func:`validate` before any work starts. The `method`
group's schemas are not here: each method module owns its config dataclass (`snnconv.methods.registry`), stored as
`method/<name>_schema` and listed first in `conf/method/<name>.yaml`; likewise `snnconv.finetune.FinetuneConfig`
for the `finetune` group (`finetune/finetune_schema`). Choices come from the registries (models,
ANN sources, methods), never from a second list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from snnconv import SnnconvError
from snnconv.checkpoints import FORMATS


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


@dataclass
class ArchConfig:
    name: str = "resnet20"  # a name in snnconv.models' registry
    width: float = 1.0  # channel multiplier (VGG16 also scales its 4096-wide classifier)
    stem: str = "cifar"  # resnet34 only: imagenet (7x7/2 conv + avg-pool) | cifar (3x3/1, QCFS/COS checkpoints) | deep (SNNC)
    dropout: float = 0.0
    maxpool: str = "keep"  # keep (refused after a spiking layer) | avg (every MaxPool2d -> AvgPool2d, same geometry)
    model_name: str = ""  # arch=torchvision | timm: the library's model name (resnet18, resnet34, vgg16_bn, ...)
    pretrained: bool = False  # arch=torchvision | timm: the library's published weights (downloaded to its cache)


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


@dataclass
class SnnConfig:
    time_chunk: int = 0  # time steps folded into the batch per call; 0 = auto (CPU: 1; CUDA: the largest that fits)
    eval_batches: int = 0  # >0: evaluate only N test batches
    memory_fraction: float = 0.8  # CUDA: share of the free device memory a simulation may use (snnconv.snn.memory)
    memory_budget_gb: float = 0.0  # >0: the simulation's memory budget in GiB on any device (overrides the fraction)


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


def validate(cfg: DictConfig) -> None:
    """Raise SnnconvError (one line, naming the fix) for values the schema's types cannot refuse."""
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
    checks = [
        (cfg.ann.L >= 1, "ann.L must be >= 1"),
        (0 < cfg.ann.percentile <= 100, "ann.percentile must be in (0, 100]"),
        (cfg.ann.threshold > 0, "ann.threshold must be > 0"),
        (cfg.arch.width > 0, "arch.width must be > 0"),
        (cfg.train.epochs >= 0, "train.epochs must be >= 0"),
        (cfg.train.save_every >= 0, "train.save_every must be >= 0 (0 = no resume checkpoints)"),
        (cfg.data.num_workers >= -1, "data.num_workers must be >= 0, or -1 for automatic"),
        (cfg.snn.time_chunk >= 0, "snn.time_chunk must be >= 0 (0 = auto)"),
        (0 < cfg.snn.memory_fraction <= 1, "snn.memory_fraction must be in (0, 1]"),
        (cfg.snn.memory_budget_gb >= 0, "snn.memory_budget_gb must be >= 0 (0 = from the device)"),
        (cfg.data.batch_size >= 1 and cfg.data.test_batch_size >= 1, "data batch sizes must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise SnnconvError(message)
    from snnconv.methods import build_method

    method = build_method(cfg.method)  # the method's own checks (MethodConfig.check)
    batches, batch_size = method.calibration_images()
    if batches * batch_size > cfg.data.calib_size:
        raise SnnconvError(
            f"method={method.name} calibrates on method.batches={batches} x method.batch_size={batch_size} = "
            f"{batches * batch_size} training images but data.calib_size={cfg.data.calib_size}; raise "
            "data.calib_size or lower method.batches / method.batch_size"
        )
    if "finetune" in cfg:
        from snnconv.finetune import finetune_config

        finetune_config(cfg.finetune)  # FinetuneConfig.check
