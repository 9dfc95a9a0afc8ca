"""ANN training (SGD + cosine schedule), the checkpoint cache, and loading a user's checkpoint.

Cache: ``<checkpoint_dir>/<key>.pt`` where key = sha1 of the config fields that change the trained weights
(data set and its training-side fields, arch, ann source, train recipe, seed). Sweeps over method, T, alpha,
ann.percentile or the SNN settings therefore train once. ``ann.checkpoint=PATH`` loads a state dict instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from snnconv import SnnconvError
from snnconv.ann import QCFS
from snnconv.progress import progress_bar

# Fields that do not change the trained weights: excluded from the cache key.
_DATA_IGNORED = ("root", "download", "test_batch_size", "num_workers", "calib_size", "limit_test")
_ANN_IGNORED = ("checkpoint", "percentile", "rts_shift")
_TRAIN_IGNORED = ("cache",)


def cache_key(cfg) -> str:
    """Hex digest (16 chars) identifying the ANN that `train_ann` would produce for this config."""

    def part(node, ignored):
        d = OmegaConf.to_container(node, resolve=True)
        return {k: v for k, v in d.items() if k not in ignored}

    payload = {
        "data": part(cfg.data, _DATA_IGNORED),
        "arch": part(cfg.arch, ()),
        "ann": part(cfg.ann, _ANN_IGNORED),
        "train": part(cfg.train, _TRAIN_IGNORED),
        "seed": int(cfg.seed),
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _param_groups(model: nn.Module, weight_decay: float, threshold_weight_decay: bool) -> list[dict]:
    thresholds = [m.threshold for m in model.modules() if isinstance(m, QCFS) and m.threshold.requires_grad]
    ids = {id(p) for p in thresholds}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "weight_decay": weight_decay}]
    if thresholds:
        groups.append({"params": thresholds, "weight_decay": weight_decay if threshold_weight_decay else 0.0})
    return groups


def train_ann(model: nn.Module, loader, train_cfg, device: torch.device, progress: bool = True) -> dict:
    """Train in place: SGD(momentum, weight decay) with a per-iteration cosine schedule over all epochs.

    loader yields (images [B, C, H, W], labels [B]). Returns {"epochs", "loss", "train_acc"} of the last epoch.
    """
    epochs = int(train_cfg.epochs)
    steps_per_epoch = len(loader) if not train_cfg.limit_batches else min(len(loader), train_cfg.limit_batches)
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.SGD(
        _param_groups(model, train_cfg.weight_decay, train_cfg.threshold_weight_decay),
        lr=train_cfg.lr,
        momentum=train_cfg.momentum,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing)
    stats = {"epochs": epochs, "loss": None, "train_acc": None}
    model.train()
    for epoch in range(epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        bar = progress_bar(loader, total=steps_per_epoch, desc=f"train {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for i, (x, y) in enumerate(bar):
            if i >= steps_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * y.numel()
            correct += (out.argmax(-1) == y).sum().item()
            seen += y.numel()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}", refresh=False)
        if not math.isfinite(loss_sum):
            raise SnnconvError(f"training diverged (loss {loss_sum}) in epoch {epoch + 1}; lower train.lr")
        stats.update(loss=round(loss_sum / max(seen, 1), 5), train_acc=round(100 * correct / max(seen, 1), 3))
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f}, train acc {stats['train_acc']:.2f}%")
    model.eval()
    return stats


def _extract_state_dict(obj: Any) -> dict:
    """Accept a bare state dict or {state_dict|model|net: ...}; strip DataParallel's 'module.' prefixes."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model", "net", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise SnnconvError("checkpoint holds no state dict; save model.state_dict() and pass it as ann.checkpoint")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _short_list(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_state(model: nn.Module, path: str | os.PathLike) -> None:
    """Load `path` into `model`, refusing missing / unexpected / mis-shaped keys with a one-line SnnconvError.

    ReLU sources' `snn_threshold` buffers may be absent (they are set from calibration data after loading).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise SnnconvError(f"ann.checkpoint={str(path)!r} does not exist; pass the path of a saved state dict")
    try:
        state = _extract_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    except SnnconvError:
        raise
    except Exception as exc:
        raise SnnconvError(f"cannot read ann.checkpoint={str(p)!r}: {type(exc).__name__}: {exc}") from exc
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("snn_threshold")]
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
            f"ann.checkpoint {p.name} does not fit arch={model.__class__.__name__} with this ann source: "
            + "; ".join(parts)
            + " (check arch.*, ann.*, data.num_classes)"
        )
    model.load_state_dict(state, strict=False)


def _atomic_save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_train(cfg, model: nn.Module, train_loader, device: torch.device, progress: bool = True) -> dict:
    """Fill `model`'s weights: from ann.checkpoint, from the cache, or by training (then cached).

    Returns {"source": checkpoint|cache|trained, "path", "seconds", "key", and train stats when trained}.
    """
    start = time.perf_counter()
    if cfg.ann.checkpoint:
        load_state(model, cfg.ann.checkpoint)
        return {"source": "checkpoint", "path": str(cfg.ann.checkpoint), "seconds": time.perf_counter() - start}
    key = cache_key(cfg)
    path = Path(cfg.checkpoint_dir) / f"{cfg.data.name}-{cfg.arch.name}-{cfg.ann.name}-{key}.pt"
    if cfg.train.cache and path.is_file():
        load_state(model, path)
        if progress:
            print(f"ANN loaded from cache {path}")
        return {"source": "cache", "path": str(path), "key": key, "seconds": time.perf_counter() - start}
    stats = train_ann(model, train_loader, cfg.train, device, progress)
    if cfg.train.cache:
        _atomic_save(model.state_dict(), path)
    info = {"source": "trained", "path": str(path) if cfg.train.cache else None, "key": key}
    return {**info, **stats, "seconds": time.perf_counter() - start}

