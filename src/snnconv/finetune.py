"""Fine-tuning the converted, calibrated SNN through time (BPTT) with LocalZO or a surrogate gradient.

Where it runs: after conversion and calibration (baseline, FTBC), before evaluation, on the TRAINING split only
(the training transform, shuffled with the run's seed). COS stays a test-time step: its controllers are removed
while training and re-attached by evaluation, so it calibrates the fine-tuned weights.

What is trained (``FinetuneConfig``): every weight and bias of the SNN's conv / linear layers; BatchNorm either
frozen (``bn=freeze``: eval-mode statistics fixed, its affine weight and bias trained) or folded into the conv /
linear layer before it (``bn=fold``, torch.nn.utils.fusion); FTBC's per-step biases beta[t] when present
(``train_bias``); thresholds only with ``train_threshold`` (kept > 0). Dropout is off (the network stays in eval
mode), v(0) stays v0_frac * theta.

Forward: the deployed dynamics. ``SpikingNetwork.differentiable`` makes every neuron run ``IFNeuron.step`` out of
place (same rounding as the fused evaluation path; tests/test_surrogate.py checks equality bit for bit), with the
spike's local gradient from ``snnconv.snn.surrogate`` (LocalZO: Mukhoty et al. NeurIPS 2023; surrogates) and,
by default, a detached reset. All ``T`` steps form one autograd graph (``snn.time_chunk`` only changes the
layout). Loss: ``ce`` = cross-entropy of the time-mean output (the evaluation readout), or ``tet``
(Deng et al. ICLR 2022, as the official LocalZO code uses it): (1 - lambda) mean_t CE(o_t, y) + lambda MSE(o, phi).

Libraries: torch.optim (Adam / AdamW / SGD) with a per-iteration cosine ``LambdaLR`` (the LocalZO recipe anneals
to 0 over the run), torch.nn.utils.fusion for BN folding; LocalZO's perturbations from a ``torch.Generator``
seeded with the run's seed; the shuffling order from torch's ``DistributedSampler`` (one replica: its order
depends on seed and epoch only, so a resume needs no sampler state).

Nothing lost, nothing done twice (``load_or_finetune``, mirroring the ANN cache of ``snnconv.train``): the
fine-tuned SNN is cached in checkpoint_dir under a key of its content before fine-tuning and the options that
change training (``finetune_key``), behind the same file lock; a resume checkpoint is written every
``save_every`` epochs and a killed job continues from it, mid-epoch too.

Cost: each step is one T-step SNN forward plus its backward; the section reports the seconds per epoch and the
ratio of one fine-tuning step to one ANN training step (same batch size, same optimizer, timed in this run on a
copy of the ANN), and the backward sparsity per layer (share of neuron-steps whose local gradient is exactly 0;
LocalZO's, measured, not exploited: dense kernels cost the same either way).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from snnconv import SnnconvError, distributed
from snnconv.progress import progress_bar
from snnconv.snn import SpikingNetwork
from snnconv.snn.surrogate import DISTRIBUTIONS, SHAPES, BackwardSparsity, LocalZO, Surrogate, TrainingSpike
from snnconv.train import cache_lock, data_identity, read_resume, resume_path, write_cache_entry, write_resume
from snnconv.utils import eval_mode, rng_state, set_rng_state

NAMES = ("none", "localzo", "surrogate")
CHOICES = {
    "surrogate": SHAPES,
    "dist": DISTRIBUTIONS,
    "optimizer": ("adam", "adamw", "sgd"),
    "schedule": ("cosine", "constant"),
    "loss": ("ce", "tet"),
    "bn": ("freeze", "fold"),
}


@dataclass
class FinetuneConfig:
    """The ``finetune`` config group (conf/finetune/{none,localzo,surrogate}.yaml); the only copy of the defaults."""

    name: str = "none"  # none | localzo | surrogate
    # local gradient of the spike, on u = (m - theta) / theta
    delta: float = 0.5  # LocalZO perturbation size / surrogate width (official LocalZO code: 0.5 at theta = 1)
    samples: int = 5  # localzo: perturbations per neuron and step (official code: 5)
    dist: str = "normal"  # localzo: normal | uniform | laplace (unit variance)
    surrogate: str = "gauss"  # surrogate: gauss (LocalZO's normal expectation) | sigmoid | atan
    alpha: Optional[float] = None  # noqa: UP045 (OmegaConf needs Optional)  sigmoid / atan slope; None = tied to delta (snnconv.snn.surrogate)
    # training
    T: int = 4  # time steps of the fine-tuning simulation
    epochs: float = 10.0  # passes over the training split; fractions allowed (0.25 = the first quarter)
    batch_size: int = 64
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4  # hybrid papers: Adam 1e-4 (Rathi et al. 2020, DIET-SNN)
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # cosine (per step, to 0) | constant
    loss: str = "ce"  # ce (time-mean output) | tet
    tet_lambda: float = 0.05  # tet: weight of the MSE term (official LocalZO / TET: 0.05)
    tet_means: float = 1.0  # tet: target phi of the MSE term
    detach_reset: bool = True
    bn: str = "freeze"  # freeze (eval statistics, affine trained) | fold (into the preceding conv / linear)
    train_bias: bool = True  # FTBC's beta[t], when the method calibrated them
    train_threshold: bool = False
    eval_before: bool = True  # evaluate on the test split before fine-tuning too (results.json: finetune.before)
    cache: bool = True  # keep the fine-tuned SNN in checkpoint_dir, keyed by content (`finetune_key`)
    save_every: float = 0.25  # epochs between resume checkpoints next to the cache entry (0 = none)
    ann_timing_batches: int = 5  # ANN training steps timed for the cost ratio (after one warm-up step)

    def changed(self) -> list[str]:
        """Fields (besides `name`) that differ from their defaults."""
        return [f.name for f in dataclasses.fields(self) if f.name != "name" and getattr(self, f.name) != f.default]

    def check(self) -> None:
        """Raise SnnconvError (one line naming the fix) for values the types cannot refuse."""
        if self.name not in NAMES:
            raise SnnconvError(f"finetune.name={self.name!r} is not one of {', '.join(NAMES)}")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise SnnconvError(f"finetune.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        checks = [
            (self.delta > 0, "finetune.delta must be > 0 (units of theta)"),
            (self.samples >= 1, "finetune.samples must be >= 1"),
            (self.alpha is None or self.alpha > 0, "finetune.alpha must be > 0 (or null: tied to delta)"),
            (self.T >= 1, "finetune.T must be >= 1"),
            (self.epochs > 0, "finetune.epochs must be > 0 (fractions allowed)"),
            (self.batch_size >= 1, "finetune.batch_size must be >= 1"),
            (self.lr > 0 and self.weight_decay >= 0, "finetune.lr must be > 0 and finetune.weight_decay >= 0"),
            (0 <= self.tet_lambda <= 1, "finetune.tet_lambda must be in [0, 1]"),
            (self.ann_timing_batches >= 1, "finetune.ann_timing_batches must be >= 1"),
            (self.save_every >= 0, "finetune.save_every must be >= 0 (epochs; 0 = no resume checkpoints)"),
        ]
        for ok, message in checks:
            if not ok:
                raise SnnconvError(message)


def finetune_config(cfg: Any) -> FinetuneConfig:
    """A checked FinetuneConfig from an instance, a DictConfig / mapping (the composed ``finetune`` node) or None."""
    if not isinstance(cfg, FinetuneConfig):
        fields = [f.name for f in dataclasses.fields(FinetuneConfig)]
        given = {} if cfg is None else {k: cfg[k] for k in fields if k in cfg}
        cfg = FinetuneConfig(**given)
    cfg.check()
    return cfg


def register_schema() -> None:
    """Store FinetuneConfig as ``finetune/finetune_schema`` in Hydra's ConfigStore (listed first in the
    defaults of conf/finetune/*.yaml, so this dataclass is the only copy of the defaults and types)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="finetune", name="finetune_schema", node=FinetuneConfig)


def local_gradient(cfg, generator: torch.Generator | None):
    """The spike's local-gradient rule of `cfg` (a FinetuneConfig or its DictConfig)."""
    if cfg.name == "localzo":
        return LocalZO(cfg.delta, cfg.samples, cfg.dist, generator)
    return Surrogate(cfg.surrogate, cfg.delta, cfg.alpha)


def loss_fn(out: torch.Tensor, y: torch.Tensor, cfg) -> torch.Tensor:
    """out: [T, B, K] output layer per step; y: [B]. ``ce``: CE(mean_t out, y); ``tet``:
    (1 - lambda) mean_t CE(out_t, y) + lambda mean((out - phi)^2) (TET, Deng et al. ICLR 2022)."""
    if cfg.loss == "ce":
        return F.cross_entropy(out.mean(0), y)
    T = out.shape[0]
    ce = F.cross_entropy(out.flatten(0, 1), y.repeat(T))  # mean over t and b = mean_t CE(out_t, y)
    return (1 - cfg.tet_lambda) * ce + cfg.tet_lambda * F.mse_loss(out, torch.full_like(out, cfg.tet_means))


@torch.no_grad()
def fold_batchnorm(snn: SpikingNetwork, example: torch.Tensor) -> list[str]:
    """Fold every BatchNorm whose input is the output of a Conv2d / Linear into that layer (its weight and bias
    absorb the eval-mode affine map; the BN becomes Identity). Pairs are found from one 1-step forward on
    `example` [1, ...]: a BN is folded when the tensor it receives is the one its conv / linear returned.
    Returns the folded BN names. Values change only by float rounding (tests/test_finetune.py)."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []
    modules = dict(snn.net.named_modules())
    for name, m in modules.items():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda _m, _i, out, n=name: produced.__setitem__(id(out), (n, out))))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):

            def pre(_m, args, n=name):
                hit = produced.get(id(args[0]))
                if hit is not None and hit[1] is args[0]:
                    pairs.append((hit[0], n))

            hooks.append(m.register_forward_pre_hook(pre))
    try:
        snn(example, 1, 1)
    finally:
        for h in hooks:
            h.remove()
    for layer, bn in pairs:
        lin, norm = modules[layer], modules[bn]
        fused = (fuse_conv_bn_eval if isinstance(lin, nn.Conv2d) else fuse_linear_bn_eval)(lin.eval(), norm.eval())
        snn.net.set_submodule(layer, fused)
        snn.net.set_submodule(bn, nn.Identity())
    return [bn for _, bn in pairs]


def _optimizer(params: list[torch.Tensor], cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _trainable(snn: SpikingNetwork, cfg) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(weights, FTBC biases, thresholds) that the optimizer updates; the buffers are switched to requires_grad."""
    weights = [p for p in snn.parameters()]
    neurons = snn.neurons().values()
    biases = [n.bias for n in neurons if cfg.train_bias and n.bias.numel()]
    thresholds = [n.threshold for n in neurons] if cfg.train_threshold else []
    for t in weights + biases + thresholds:
        t.requires_grad_(True)
    return weights, biases, thresholds


def _check_bias_steps(snn: SpikingNetwork, T: int) -> None:
    short = [n for n, neuron in snn.neurons().items() if neuron.bias.numel() and neuron.bias.shape[0] < T]
    if short:
        steps = snn.neurons()[short[0]].bias.shape[0]
        raise SnnconvError(
            f"finetune.T={T} but the calibrated biases cover {steps} steps; use finetune.T <= max(T) of the run"
        )


def _ann_step_seconds(ann: nn.Module, loader: DataLoader, cfg, device: torch.device) -> float:
    """Median seconds of one ANN training step (forward, CE backward, optimizer step) on a copy of `ann`, same
    batch size and optimizer as the fine-tuning, after one untimed warm-up step."""
    model = copy.deepcopy(ann).to(device).train()
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    times = []
    for i, (x, y) in enumerate(loader):
        if i > cfg.ann_timing_batches:
            break
        x, y = x.to(device), y.to(device)
        _sync(device)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i > 0:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] if times else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochSampler(Sampler[int]):
    """Shuffled training indices: epoch e's order is torch's `DistributedSampler` (one replica, seed, set_epoch),
    so it depends on (seed, epoch) only, and `start` skips the first indices without loading their images (a
    resume in the middle of an epoch sees the same remaining batches as an uninterrupted run)."""

    def __init__(self, n: int, seed: int):
        self.inner = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=int(seed))
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.start = int(start)

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.start, None)

    def __len__(self) -> int:
        return len(self.inner) - self.start


def _save_every_steps(cfg: FinetuneConfig, per_epoch: int) -> int:
    """Steps between two resume checkpoints (0 = none)."""
    return max(1, math.ceil(float(cfg.save_every) * per_epoch)) if cfg.save_every > 0 else 0


def finetune(
    snn: SpikingNetwork,
    ann: nn.Module,
    train_set,
    cfg,
    time_chunk: int,
    device: torch.device,
    seed: int,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> dict:
    """Fine-tune `snn` in place (module docstring) on `train_set` (the training split, a Dataset of
    (image [C, H, W], label)) for cfg.epochs epochs at cfg.T steps. `ann` is only timed (on a copy) for the cost
    ratio. Neuron controllers (COS) are removed; evaluation re-attaches them. Returns the results.json section
    (without the accuracies, which the runner adds). Raises SnnconvError when FTBC biases are shorter than cfg.T
    or the loss diverges.

    Resume: with `checkpoint` set, every `cfg.save_every` epochs (fractions allowed) the SNN's state dict, the
    optimizer, the schedule, the step count, the RNG states (torch, CUDA, numpy, python; LocalZO's generator) and
    the running statistics (losses, step times, sparsity counts, seconds so far) are written there atomically by
    rank 0; a call that finds the file continues after its step, in the middle of an epoch too (`EpochSampler`).
    With in-process data loading (data.num_workers=0) the resumed network equals an uninterrupted run's bit for
    bit (tests/test_finetune.py); loader workers restart their augmentation RNG streams at a resume."""
    cfg = finetune_config(cfg)
    if cfg.name == "none":
        raise SnnconvError("finetune.name=none: nothing to fine-tune; choose finetune=localzo or finetune=surrogate")
    T = int(cfg.T)
    _check_bias_steps(snn, T)
    for neuron in snn.neurons().values():
        neuron.controllers = ()
    bs = int(cfg.batch_size)
    sampler = EpochSampler(len(train_set), seed)
    # the loader's own generator (worker base seeds) is kept apart from the global RNG the transforms draw from
    loader = DataLoader(train_set, batch_size=bs, sampler=sampler, generator=torch.Generator().manual_seed(int(seed)))
    per_epoch = math.ceil(len(train_set) / bs)
    total = max(1, math.ceil(float(cfg.epochs) * per_epoch))
    save_steps = _save_every_steps(cfg, per_epoch)
    folded = fold_batchnorm(snn, train_set[0][0][None].to(device)) if cfg.bn == "fold" else []
    weights, biases, thresholds = _trainable(snn, cfg)
    opt = _optimizer(weights + biases + thresholds, cfg)
    schedule = (lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total))) if cfg.schedule == "cosine" else (lambda i: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    zo_gen = torch.Generator(device=device).manual_seed(int(seed))
    sparsity = BackwardSparsity()
    train = TrainingSpike(local_gradient(cfg, zo_gen), bool(cfg.detach_reset), sparsity)
    names = {neuron: name for name, neuron in snn.neurons().items()}

    losses: list[float] = []
    step_times: list[float] = []
    loss_sum, seen, elapsed, first = 0.0, 0, 0.0, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = read_resume(ckpt, "fine-tuning from the first step")
    if state is not None:
        with torch.no_grad():
            snn.load_state_dict(state["snn"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        zo_gen.set_state(state["localzo_rng"])
        first = int(state["step"])
        losses, step_times = list(state["losses"]), list(state["step_times"])
        loss_sum, seen, elapsed = float(state["loss_sum"]), int(state["seen"]), float(state["seconds"])
        by_name = {name: neuron for neuron, name in names.items()}
        for name, (zero, count) in state["sparsity"].items():
            sparsity.zero[by_name[name]] = torch.tensor(zero, device=device)
            sparsity.total[by_name[name]] = count
        if progress:
            print(f"resuming fine-tuning after step {first}/{total} from {ckpt}")

    start = time.perf_counter()
    try:
        with eval_mode(snn), snn.differentiable(train):
            bar = progress_bar(range(first, total), desc=f"finetune T={T}", disable=not progress, leave=False,
                               initial=first, total=total)
            data = iter(())
            for step in bar:
                epoch, i = divmod(step, per_epoch)
                if step == first or i == 0:
                    sampler.set_epoch(epoch, i * bs)
                    data = iter(loader)
                x, y = next(data)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                _sync(device)
                t0 = time.perf_counter()
                loss = loss_fn(snn(x, T, time_chunk), y, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if thresholds:
                    with torch.no_grad():
                        for th in thresholds:
                            th.clamp_(min=1e-4)  # u = (m - theta) / theta needs theta > 0
                _sync(device)
                step_times.append(time.perf_counter() - t0)
                if not math.isfinite(loss.item()):
                    raise SnnconvError(f"fine-tuning diverged (loss {loss.item()}) at step {step + 1}; lower finetune.lr")
                loss_sum += loss.item() * y.numel()
                seen += y.numel()
                if (step + 1) % per_epoch == 0 or step + 1 == total:
                    losses.append(round(loss_sum / seen, 6))
                    loss_sum, seen = 0.0, 0
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                if ckpt is not None and save_steps and (step + 1) % save_steps == 0 and step + 1 < total \
                        and distributed.is_main():
                    ckpt = write_resume({
                        "snn": snn.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "step": step + 1,
                        "rng": rng_state(),
                        "localzo_rng": zo_gen.get_state(),
                        "losses": losses,
                        "step_times": step_times,
                        "loss_sum": loss_sum,
                        "seen": seen,
                        "seconds": elapsed + time.perf_counter() - start,
                        "sparsity": {names[k]: (int(sparsity.zero[k]), int(sparsity.total[k])) for k in sparsity.total},
                    }, ckpt, "fine-tuning")
    finally:
        for t in biases + thresholds:
            t.requires_grad_(False)  # back to plain buffers (parameters stay parameters)
            t.grad = None
    seconds = elapsed + time.perf_counter() - start
    epochs_done = total / per_epoch
    snn_step = sorted(step_times[1:] or step_times)[len(step_times[1:] or step_times) // 2]
    ann_step = _ann_step_seconds(ann, loader, cfg, device)
    layers = {names[n]: round(sparsity.share(n), 6) for n in snn.neurons().values() if n in sparsity.total}
    zero = sum(float(sparsity.zero[k]) for k in sparsity.total)
    count = sum(sparsity.total.values())
    rule = train.rule
    return {
        "name": cfg.name,
        "rule": {"dist": rule.dist, "delta": rule.delta, "samples": rule.samples}
        if isinstance(rule, LocalZO)
        else {"shape": rule.shape, "delta": rule.delta, "alpha": round(rule.alpha, 6)},
        "T": T,
        "epochs": round(epochs_done, 4),
        "steps": total,
        "batch_size": int(cfg.batch_size),
        "optimizer": cfg.optimizer,
        "lr": float(cfg.lr),
        "schedule": cfg.schedule,
        "loss": cfg.loss,
        "detach_reset": bool(cfg.detach_reset),
        "bn": cfg.bn,
        "bn_folded": len(folded),
        "trained": {
            "weights": sum(p.numel() for p in weights),
            "ftbc_biases": sum(b.numel() for b in biases),
            "thresholds": sum(t.numel() for t in thresholds),
        },
        "train_loss": losses,
        "seconds": round(seconds, 3),
        "seconds_per_epoch": round(seconds / epochs_done, 3),
        "step_seconds": round(snn_step, 5),
        "ann_step_seconds": round(ann_step, 5),
        "ann_seconds_per_epoch": round(ann_step * per_epoch, 3),
        "ratio_to_ann_epoch": round(snn_step / ann_step, 3) if ann_step > 0 else None,
        "backward_sparsity": {"total": round(zero / count, 6) if count else None, "layers": layers},
        **({"resumed_from_step": first} if first else {}),
    }


# FinetuneConfig fields that do not change the fine-tuned network: left out of its cache key.
_KEY_IGNORED = ("eval_before", "ann_timing_batches", "cache", "save_every")
CACHE_FORMAT = 1


def finetune_key(cfg, snn: SpikingNetwork, time_chunk: int, device: torch.device) -> str:
    """Hex digest (16 chars) identifying the network that `finetune` would produce: the SNN's whole state before
    fine-tuning (weights, thresholds, FTBC biases: every parameter and buffer, bytes and shapes), the training data
    (`train.data_identity`), every FinetuneConfig field that changes training, the seed, the time chunk and the
    device type (both change rounding). Content, not names: methods that convert to the same network (baseline and
    COS, whose shift is a test-time step) share one entry. `cfg`: the whole run config."""
    h = hashlib.sha1()
    for name, tensor in snn.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (BN's step count) cannot be viewed as bytes
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    tune = {k: v for k, v in dataclasses.asdict(finetune_config(cfg.finetune)).items() if k not in _KEY_IGNORED}
    payload = {"data": data_identity(cfg.data), "finetune": tune, "seed": int(cfg.seed), "time_chunk": int(time_chunk),
               "device": torch.device(device).type, "snn": h.hexdigest()}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def finetune_cache_path(cfg, key: str) -> Path:
    """<checkpoint_dir>/<data>-<arch>-<ann>-ft-<finetune.name>-<key>.pt (next to the ANN cache entries)."""
    return Path(cfg.checkpoint_dir) / f"{cfg.data.name}-{cfg.arch.name}-{cfg.ann.name}-ft-{cfg.finetune.name}-{key}.pt"


def _load_entry(snn: SpikingNetwork, path: Path, cfg, train_set, device: torch.device) -> dict:
    """Fill `snn` from cache entry `path`; returns its stored results section. Raises SnnconvError when the file
    is unreadable or does not fit this network."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            raise ValueError("not a fine-tuned SNN entry of this snnconv version")
        for neuron in snn.neurons().values():
            neuron.controllers = ()
        if cfg.finetune.bn == "fold":
            fold_batchnorm(snn, train_set[0][0][None].to(device))
        with torch.no_grad():
            snn.load_state_dict(entry["snn"])
        return dict(entry["section"])
    except Exception as exc:
        raise SnnconvError(f"fine-tuning cache file {path.name} is unusable ({' '.join(str(exc).split())[:160]})") from exc


def load_or_finetune(cfg, snn: SpikingNetwork, ann: nn.Module, train_set, time_chunk: int, device: torch.device,
                     progress: bool = True) -> dict:
    """Fine-tune `snn` in place as `finetune` does, or fill it from the cache (cfg.finetune.cache, default on).

    The entry (`finetune_cache_path`, keyed by `finetune_key`) holds the fine-tuned state dict and the results
    section of the run that trained it, so a cache hit reports the same losses, timings and sparsity (plus
    "source": "cache"). Like the ANN cache (`train.load_or_train`): the entry's lock makes jobs of one sweep
    fine-tune once (baseline and COS, a rerun with more T values, another test subset); a resume checkpoint
    ``<entry>.resume.pt`` is written every `finetune.save_every` epochs, so a killed or requeued job continues
    where it stopped; an unusable entry is a one-line warning and the network is fine-tuned again; an entry that
    cannot be written is a warning (the run goes on). Several ranks: call on every rank; every rank fine-tunes
    (identical work, as before the cache), rank 0 alone writes, and decides cache hits for all.
    Returns the results.json section with "source" (cache | trained), "path" and "key"."""
    start = time.perf_counter()
    if not cfg.finetune.cache:
        section = finetune(snn, ann, train_set, cfg.finetune, time_chunk, device, int(cfg.seed), progress)
        return {**section, "source": "trained", "path": None}
    key = distributed.broadcast_object(finetune_key(cfg, snn, time_chunk, device))
    path = finetune_cache_path(cfg, key)
    with cache_lock(path, progress, what="fine-tuning this SNN"):
        if distributed.broadcast_object(path.is_file()):
            try:
                section = _load_entry(snn, path, cfg, train_set, device)
                if progress:
                    print(f"fine-tuned SNN loaded from cache {path} ({time.perf_counter() - start:.1f} s)")
                return {**section, "source": "cache", "path": str(path), "key": key}
            except SnnconvError as exc:  # every rank reads the same file: all of them fine-tune again
                if distributed.is_main():
                    print(f"warning: {exc}; fine-tuning again and replacing the cache file", file=sys.stderr)
        section = finetune(snn, ann, train_set, cfg.finetune, time_chunk, device, int(cfg.seed), progress,
                           checkpoint=resume_path(path))
        entry = {"format": CACHE_FORMAT, "snn": snn.state_dict(), "section": section}
        saved = write_cache_entry(entry, path, "the fine-tuned SNN", progress)
    return {**section, "source": "trained", "path": str(path) if saved else None, "key": key}
