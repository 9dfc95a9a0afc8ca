"""ANN training (SGD + cosine schedule), the checkpoint cache, and loading a user's checkpoint.

Cache: ``<checkpoint_dir>/<key>.pt`` where key = sha1 of the config fields that change the trained weights
(data set and its training-side fields, arch, ann source, train recipe, seed). Sweeps over method, T, alpha,
ann.percentile or the SNN settings therefore train once. ``ann.checkpoint=PATH`` loads a state dict instead.

Many ranks (snnconv.distributed, launched by torchrun or SLURM): torch's DistributedDataParallel (gradients
averaged over ranks, so a step equals one process's step on the same global batch), DistributedSampler with
set_epoch (the recipe's data.batch_size is the GLOBAL batch, B / W images per rank), optional SyncBatchNorm
(`train.sync_bn`: BN statistics over the global batch; without it each rank normalises its own B / W images and
rank 0's BN buffers are kept at the end). Rank 0 alone takes the cache lock and writes the cache entry and the
resume checkpoints; the others follow its decisions and load what it wrote. The sampler is the same in one
process: the global batches depend on (seed, epoch) only, so a run resumed with another number of ranks sees the
same batches (the runner passes `distributed.distributed_train_loader(loaders.train, seed)`).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from snnconv import SnnconvError, distributed
from snnconv.ann import SourceActivation, snn_only_fields
from snnconv.checkpoints import read_checkpoint, remap_state_dict
from snnconv.progress import progress_bar
from snnconv.utils import atomic_save, modules_of_type, rng_state, set_rng_state

# Fields that do not change the trained weights: excluded from the cache key.
_DATA_IGNORED = ("root", "download", "test_batch_size", "num_workers", "calib_size", "limit_test")
_ANN_IGNORED = ("checkpoint", "checkpoint_format", "trust_checkpoint")  # plus every source's snn_only_fields
_TRAIN_IGNORED = ("cache", "save_every", "channels_last")
_TRAIN_OMITTED_AT = {"amp": False, "sync_bn": False}  # in the key only when set: older entries keep their key
# Newer arch fields, likewise left out of the key while at their default.
_DEFAULTS_IGNORED = {"arch": {"maxpool": "keep", "model_name": "", "pretrained": False}}


def data_identity(data_cfg) -> dict:
    """The `data` fields that change what training sees (in the cache keys of the ANN and of the fine-tuned SNN)."""
    return {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items() if k not in _DATA_IGNORED}


def cache_key(cfg) -> str:
    """Hex digest (16 chars) identifying the ANN that `train_ann` would produce for this config."""

    def part(node, ignored, group=""):
        d = OmegaConf.to_container(node, resolve=True)
        defaults = _DEFAULTS_IGNORED.get(group, {})
        return {k: v for k, v in d.items() if k not in ignored and not (k in defaults and v == defaults[k])}

    train = part(cfg.train, _TRAIN_IGNORED)
    train = {k: v for k, v in train.items() if k not in _TRAIN_OMITTED_AT or v != _TRAIN_OMITTED_AT[k]}
    payload = {
        "data": data_identity(cfg.data),
        "arch": part(cfg.arch, (), "arch"),
        "ann": part(cfg.ann, _ANN_IGNORED + snn_only_fields()),
        "train": train,
        "seed": int(cfg.seed),
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _param_groups(model: nn.Module, weight_decay: float, threshold_weight_decay: bool) -> list[dict]:
    thresholds = [p for m in modules_of_type(model, SourceActivation).values() for p in m.trainable_thresholds()]
    ids = {id(p) for p in thresholds}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "weight_decay": weight_decay}]
    if thresholds:
        groups.append({"params": thresholds, "weight_decay": weight_decay if threshold_weight_decay else 0.0})
    return groups


def use_amp(amp: bool, device: torch.device) -> bool:
    """True when bf16 autocast applies: `train.amp` on a CUDA device. On other devices it is a no-op, said in one
    line on stderr (CPU autocast to bf16 is slower than fp32 on most CPUs and is not what the recipes measured)."""
    if amp and torch.device(device).type != "cuda":
        print(f"train.amp=true is a no-op on {torch.device(device).type}: bf16 autocast is used on CUDA only; "
              "training in fp32", file=sys.stderr)
        return False
    return bool(amp)


def read_resume(ckpt: Path | None, otherwise: str) -> dict | None:
    """The resume checkpoint `ckpt` (ours, next to a cache entry), read on every rank when rank 0 finds it; None
    when there is none, or when it is unreadable (a warning line ending with `otherwise`, e.g. "training from the
    first epoch": a file no run could have finished writing, every rank starts over)."""
    if ckpt is None or not distributed.broadcast_object(ckpt.is_file()):  # rank 0 decides: all ranks resume
        return None
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=False)  # our own file, next to the cache
    except Exception as exc:
        print(f"warning: resume checkpoint {ckpt} is unreadable ({' '.join(str(exc).split())[:160]}); {otherwise}",
              file=sys.stderr)
        return None


def write_resume(state: dict, ckpt: Path, what: str) -> Path | None:
    """Write resume checkpoint `state` to `ckpt` atomically (call on rank 0); returns `ckpt`, or None after a
    warning line when it cannot be written (the `what` phase goes on without resume checkpoints)."""
    try:
        atomic_save(state, ckpt)
        return ckpt
    except (OSError, RuntimeError) as exc:
        print(f"warning: resume checkpoint {ckpt} could not be written ({' '.join(str(exc).split())}); "
              f"{what} goes on without resume checkpoints", file=sys.stderr)
        return None


def write_cache_entry(obj, path: Path, what: str, progress: bool = True) -> bool:
    """Rank 0 writes cache entry `path` atomically, removes its resume checkpoint (`resume_path`) and, with
    `progress`, says where `what` went; a failure is a warning line naming `what` (the run goes on without caching
    it). Call on every rank; returns, on every rank, whether the entry was written."""
    saved = True
    if distributed.is_main():
        try:
            atomic_save(obj, path)
            resume_path(path).unlink(missing_ok=True)
            if progress:
                print(f"{what} cached in {path}")
        except (OSError, RuntimeError) as exc:
            print(f"warning: {what} could not be cached in {path.parent} ({' '.join(str(exc).split())});"
                  f" the run goes on without caching it", file=sys.stderr)
            saved = False
    return distributed.broadcast_object(saved)


def resume_path(path: Path) -> Path:
    """Where the training checkpoint of cache entry `path` (``<name>.pt``) lives: ``<name>.resume.pt``."""
    return path.with_name(path.stem + ".resume.pt")


def _distributed_net(model: nn.Module, train_cfg, device: torch.device) -> nn.Module:
    """The module the training steps run: `model` itself in one process; with several ranks a DDP wrapper around
    a copy (SyncBatchNorm layers if train.sync_bn), so `model` keeps its plain BN layers for the conversion."""
    if not distributed.is_distributed():
        return model
    net = copy.deepcopy(model)
    if train_cfg.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def train_ann(
    model: nn.Module,
    loader,
    train_cfg,
    device: torch.device,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    log: Callable[[dict], None] | None = None,
) -> dict:
    """Train in place: SGD(momentum, weight decay) with a per-iteration cosine schedule over all epochs.

    loader yields (images [B, C, H, W], labels [B]): this rank's loader, `distributed.distributed_train_loader`
    (B / W images of each global batch, shuffled by seed + epoch; its sampler's `set_epoch` is called every epoch)
    as the runner builds it. Call on every rank. Returns {"epochs", "loss", "train_acc"} of the last epoch, over
    all ranks (and "resumed_from_epoch" when a checkpoint was resumed).
    `log` (e.g. `report.WandbRun.log`) receives the running loss / accuracy (%) / learning rate every 20 steps
    as `train/step`, `train/loss`, `train/acc`, `train/lr` (this rank's), and `train/epoch_loss` /
    `train/epoch_acc` per epoch (all ranks').

    Speed (train.*): `amp` = bf16 autocast on CUDA (weights, optimizer state and the loss stay fp32; no loss
    scaling is needed with bf16's 8-bit exponent, the scaler is saved disabled), `channels_last` = NHWC weights and
    inputs. Running loss / accuracy sums stay on the device and are read once per log interval (20 steps) and at
    the end of each epoch, so a step never waits for the host.

    Resume: with `checkpoint` set, every `train.save_every` epochs (and after the last) the model, optimizer,
    scheduler, completed epoch count, RNG states (torch, CUDA, numpy, python, the loader's shuffling generator)
    and the AMP scaler are written there atomically (by rank 0); a call that finds the file continues after its
    epoch, on every rank, whatever the number of ranks that wrote it (the epoch's batches depend on seed and epoch
    only). With in-process data loading (data.num_workers=0) and deterministic kernels the resumed weights equal
    an uninterrupted run's bit for bit (tests/test_train.py); persistent loader workers restart their augmentation
    RNG streams at a resume (statistically the same, not bit-identical).
    """
    epochs = int(train_cfg.epochs)
    steps_per_epoch = len(loader) if not train_cfg.limit_batches else min(len(loader), train_cfg.limit_batches)
    total = max(1, epochs * steps_per_epoch)
    channels_last = bool(train_cfg.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = read_resume(ckpt, "training from the first epoch")
    if state is not None:
        model.load_state_dict(state["model"])
    net = _distributed_net(model, train_cfg, device)
    inner = net.module if isinstance(net, DistributedDataParallel) else net
    opt = torch.optim.SGD(
        _param_groups(inner, train_cfg.weight_decay, train_cfg.threshold_weight_decay),
        lr=train_cfg.lr,
        momentum=train_cfg.momentum,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing)
    amp = use_amp(bool(train_cfg.amp), device)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=False)  # bf16: no loss scaling
    save_every = int(train_cfg.save_every)
    stats: dict[str, Any] = {"epochs": epochs, "loss": None, "train_acc": None}
    first = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], getattr(loader, "generator", None))
        first = int(state["epoch"])
        stats.update(state["stats"], resumed_from_epoch=first)
        if progress:
            print(f"resuming training after epoch {first}/{epochs} from {ckpt}")
    net.train()
    for epoch in range(first, epochs):
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        bar = progress_bar(loader, total=steps_per_epoch, desc=f"train {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for i, (x, y) in enumerate(bar):
            if i >= steps_per_epoch:
                break
            if channels_last and x.dim() == 4:
                x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
            else:
                x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
                out = net(x)
                loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * y.numel()
            correct += (out.detach().argmax(-1) == y).sum()
            seen += y.numel()
            if (progress or log is not None) and i % 20 == 0:  # the only host syncs of an epoch, besides its end
                running_loss, running_acc = loss_sum.item() / seen, 100 * correct.item() / seen
                bar.set_postfix(loss=f"{running_loss:.3f}", acc=f"{running_acc:.1f}", refresh=False)
                if log is not None:
                    log({"train/step": epoch * steps_per_epoch + i + 1, "train/loss": running_loss,
                         "train/acc": running_acc, "train/lr": sched.get_last_lr()[0]})
        sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device).double()])
        loss_total, correct_total, seen_total = distributed.all_reduce_sum(sums).tolist()  # over all ranks
        if not math.isfinite(loss_total):
            raise SnnconvError(f"training diverged (loss {loss_total}) in epoch {epoch + 1}; lower train.lr")
        stats.update(
            loss=round(loss_total / max(seen_total, 1), 5), train_acc=round(100 * correct_total / max(seen_total, 1), 3)
        )
        if log is not None:
            log({"train/step": (epoch + 1) * steps_per_epoch, "train/epoch": epoch + 1,
                 "train/epoch_loss": stats["loss"], "train/epoch_acc": stats["train_acc"]})
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f}, train acc {stats['train_acc']:.2f}%")
        last = epoch + 1 == epochs
        if ckpt is not None and save_every > 0 and ((epoch + 1) % save_every == 0 or last) and distributed.is_main():
            ckpt = write_resume({
                "model": inner.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "rng": rng_state(getattr(loader, "generator", None)),
                "stats": {k: v for k, v in stats.items() if k != "resumed_from_epoch"},
            }, ckpt, "training")
    if inner is not model:
        model.load_state_dict(inner.state_dict())
        distributed.broadcast_module(model)  # BN buffers without sync_bn differ per rank: keep rank 0's
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return stats


def _short_list(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_state(model: nn.Module, path: str | os.PathLike, fmt: str = "snnconv", trust: bool = False,
               what: str = "ann.checkpoint") -> str:
    """Load `path` into `model`, its keys renamed from layout `fmt` first (`snnconv.checkpoints`), refusing
    unreadable files and missing / unexpected / mis-shaped keys with a one-line SnnconvError that names `what`
    (the setting or cache file the path came from). Returns the layout used (`auto` resolved).

    A source's `optional_state` entries may be absent (ReLU thresholds: set from calibration data after loading);
    the name ReLU thresholds had before they were called `threshold` (`snn_threshold`) is read as `threshold`.
    """
    state = read_checkpoint(path, trust, what=what)
    own = model.state_dict()
    optional = {
        f"{name}.{key}" for name, m in modules_of_type(model, SourceActivation).items() for key in m.optional_state
    }
    legacy = {k: k[: -len("snn_threshold")] + "threshold" for k in state if k.endswith(".snn_threshold")}
    state = {legacy.get(k, k): v for k, v in state.items()}
    state, used = remap_state_dict(state, fmt, own)
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short_list(unexpected)}")
        if shape:
            parts.append(f"shape mismatch at {_short_list(shape)}")
        raise SnnconvError(
            f"{what} {Path(path).name} (read as layout {used}) does not fit arch={model.__class__.__name__} "
            "with this ann source: " + "; ".join(parts)
            + " (check arch.*, ann.name, data.num_classes, or set ann.checkpoint_format)"
        )
    model.load_state_dict(state, strict=False)
    return used


LOCK_POLL_S = 10.0  # several ranks: how often they ask rank 0 whether it got the cache lock


def _try_lock(fh) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def cache_lock(path: Path, progress: bool = True, what: str = "training this ANN") -> Iterator[None]:
    """Exclusive lock on cache entry `path` (fcntl.flock on ``<path>.lock``, which works across processes and, on
    Linux NFS, across nodes): jobs of one sweep that need the same ANN train it once; the others wait here and
    then load it. The lock file is left in place (unlinking it would let a third job lock a different inode).

    Several ranks (call on every rank): rank 0 alone holds the lock; while it waits, all ranks ask it every
    LOCK_POLL_S seconds (one broadcast each), so no rank sits in one collective past its timeout while another job
    trains for hours."""
    many = distributed.is_distributed()
    fh = None
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_name(path.name + ".lock"), "a+")  # closed in the finally below
    try:
        got = _try_lock(fh) if fh is not None else False
        while not (distributed.broadcast_object(got) if many else got):
            if progress:
                print(f"waiting for {path.name}: another job is {what}", flush=True)
                progress = False  # said once
            if not many:
                fcntl.flock(fh, fcntl.LOCK_EX)  # one process: block until the other job is done
                got = True
            else:
                time.sleep(LOCK_POLL_S)
                got = _try_lock(fh) if fh is not None else False
        yield
    finally:
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


def check_thresholds(model: nn.Module, what: str) -> None:
    """Every loaded activation threshold (a QCFS lambda, any module's `threshold` tensor) must be > 0: a neuron
    with theta <= 0 fires at every step whatever its input. A threshold that the source sets after loading (its
    `optional_state`, e.g. ReLU's percentile threshold: NaN until `calibrate`) may be unset (all NaN) in the
    file. Raises SnnconvError naming the first bad layer."""
    for name, module in model.named_modules():
        theta = getattr(module, "threshold", None)
        if not isinstance(theta, torch.Tensor) or not theta.numel() or bool((theta > 0).all()):
            continue
        if "threshold" in getattr(module, "optional_state", ()) and bool(torch.isnan(theta).all()):
            continue  # not set yet: calibration sets it from data
        kind = "threshold (QCFS lambda)" if type(module).__name__.startswith("QCFS") else "threshold"
        raise SnnconvError(
            f"{what}: the {kind} of layer {name} is {float(theta.detach().min()):.4g}, outside its range: "
            "must be > 0; check that the file is a trained checkpoint of this network and ann source"
        )


def cache_path(cfg) -> Path:
    """Where the ANN that `cfg` trains is cached: <checkpoint_dir>/<data>-<arch>-<ann>-<cache_key>.pt."""
    return Path(cfg.checkpoint_dir) / f"{cfg.data.name}-{cfg.arch.name}-{cfg.ann.name}-{cache_key(cfg)}.pt"


def load_or_train(cfg, model: nn.Module, train_loader, device: torch.device, progress: bool = True,
                  log: Callable[[dict], None] | None = None) -> dict:
    """Fill `model`'s weights: from ann.checkpoint, from the cache, or by training (then cached).

    With the cache on, training holds the entry's lock (`cache_lock`; a job that finds it held waits, then loads
    what the first one saved), saves a resume checkpoint next to the entry every `train.save_every` epochs
    (``<entry>.resume.pt``; a rerun continues from it, e.g. a SLURM job requeued after a timeout), and replaces
    it by the finished ANN. Several ranks: call on every rank; rank 0 decides (cache hit or not), trains with the
    others, alone writes the entry, and the others load it after a barrier. Returns {"source":
    checkpoint|cache|trained, "path", "seconds", "key", and train stats when trained}.
    A cache file that cannot be read or does not fit is reported as a cache problem (one warning line) and the
    ANN is retrained; a cache that cannot be written after training is a warning too (the run goes on and writes
    its results). `log` receives training curves (see `train_ann`).
    """
    start = time.perf_counter()
    if cfg.ann.checkpoint:
        used = load_state(model, cfg.ann.checkpoint, cfg.ann.checkpoint_format, cfg.ann.trust_checkpoint)
        check_thresholds(model, f"ann.checkpoint {Path(cfg.ann.checkpoint).name}")
        info = {"source": "checkpoint", "path": str(cfg.ann.checkpoint), "checkpoint_format": used}
        return {**info, "seconds": time.perf_counter() - start}
    key = cache_key(cfg)
    path = cache_path(cfg)
    if not cfg.train.cache:
        stats = train_ann(model, train_loader, cfg.train, device, progress, log=log)
        return {"source": "trained", "path": None, "key": key, **stats, "seconds": time.perf_counter() - start}
    with cache_lock(path, progress):
        if distributed.broadcast_object(path.is_file()):  # rank 0, holding the lock, decides for every rank
            try:
                load_state(model, path, what="cache file")
                check_thresholds(model, f"cache file {path.name}")
                if progress:
                    print(f"ANN loaded from cache {path}")
                return {"source": "cache", "path": str(path), "key": key, "seconds": time.perf_counter() - start}
            except SnnconvError as exc:  # every rank reads the same file: all of them retrain
                if distributed.is_main():
                    print(f"warning: {exc}; training the ANN again and replacing the cache file", file=sys.stderr)
        stats = train_ann(model, train_loader, cfg.train, device, progress, checkpoint=resume_path(path), log=log)
        saved = write_cache_entry(model.state_dict(), path, "the trained ANN", progress)
        if saved and not distributed.is_main():
            load_state(model, path)  # what rank 0 wrote (the same weights it broadcast after training)
    return {"source": "trained", "path": str(path) if saved else None, "key": key, **stats,
            "seconds": time.perf_counter() - start}
