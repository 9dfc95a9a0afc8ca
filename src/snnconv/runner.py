"""`run(cfg, out_dir)`: the whole pipeline for one composed config, top to bottom.

numerics switches -> data -> ANN (create; memory plans from its layer shapes and, with stats=true, the counting
plan of its graph, before any training) -> load / train /
cache -> ReLU thresholds from calibration images -> convert -> method.calibrate (training-split batches) ->
[finetune through time on the training split, evaluated before too] -> evaluate at every T from one simulation
(spike statistics from the same simulation) -> results.json / csv / png -> W&B. Returns the results dict (see
`snnconv.report` for its keys).

Many ranks (torchrun / SLURM, `snnconv.distributed`): every rank walks the same pipeline on its share of the
work (training batches, calibration batches or slices of them, whole test batches), the counts are summed over
ranks, and rank 0 alone writes the results files, W&B and the checkpoint cache; `results["distributed"]` records
the world size and backend. Fine-tuning has no data parallelism yet: every rank runs the same (seeded) fine-tuning
and rank 0's weights are broadcast, so all ranks evaluate one network.
"""

from __future__ import annotations

import itertools
import math
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from snnconv import SnnconvError, __version__, distributed
from snnconv.ann import act_layer, source_class
from snnconv.checks import remove_stale_tmp, require_writable_dir
from snnconv.data import build_loaders
from snnconv.device import configure_numerics, numerics_record, reset_peak_memory
from snnconv.evaluate import evaluate
from snnconv.finetune import load_or_finetune
from snnconv.methods import Method, build_method
from snnconv.models import create_model, replace_maxpool
from snnconv.progress import ProgressLoader
from snnconv.report import WandbRun, config_hash, format_table, write_local
from snnconv.snn import convert, default_time_chunk
from snnconv.snn.memory import GiB, MemoryProfile, SimPlan, device_budget, plan_simulation, profile_network
from snnconv.stats import Plan, SpikeCounter, build_plan
from snnconv.train import load_or_train


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; explicit names are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SnnconvError(f"device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SnnconvError(f"device={name!r} but CUDA is not available here; use device=auto or device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SnnconvError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s), "
                           f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SnnconvError(f"device={name!r} but MPS (Apple-silicon GPUs under macOS) is not available here; "
                           "use device=auto or device=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SnnconvError(f"device={name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def calibration_batches(loaders, batches: int, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """The first `batches` batches of `batch_size` images from the (training-split) calibration subset ([] when
    the method needs none); with several ranks this rank's contiguous rows of each (FTBC sums its statistics over
    the ranks' rows). Refuses a request the subset cannot fill (it used to be cut silently to what was there)."""
    if batches <= 0:
        return []
    available = len(loaders.calib.dataset)
    if batches * batch_size > available:
        raise SnnconvError(
            f"method.batches={batches} x method.batch_size={batch_size} needs {batches * batch_size} calibration "
            f"images but the calibration subset holds {available}; raise data.calib_size or lower method.batches"
        )
    if batches and batch_size < distributed.world_size():
        raise SnnconvError(
            f"method.batch_size={batch_size} is below the {distributed.world_size()} ranks that share each "
            f"calibration batch; raise method.batch_size or use fewer ranks"
        )
    loader = DataLoader(loaders.calib.dataset, batch_size=batch_size, shuffle=False)
    return [distributed.local_rows(x).to(device) for x, _ in itertools.islice(loader, batches)]


def stats_plan(cfg, model: torch.nn.Module, example: torch.Tensor) -> Plan | None:
    """The counting plan when cfg.stats; None (with a one-line warning) for a graph snnconv.stats cannot count,
    so that a run of such a network still gives its accuracies."""
    if not cfg.stats:
        return None
    try:
        return build_plan(model, example)
    except SnnconvError as exc:
        print(f"warning: {exc} (continuing without statistics)", file=sys.stderr)
        return None


def build_ann(cfg, num_classes: int, in_chans: int) -> nn.Module:
    """The ANN `cfg.arch` / `cfg.ann` describe (untrained; on the current default device, e.g. meta)."""
    model = create_model(
        cfg.arch.name,
        act_layer=act_layer(cfg.ann),
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=cfg.data.img_size,
        width=cfg.arch.width,
        stem=cfg.arch.stem,
        dropout=cfg.arch.dropout,
        model_name=cfg.arch.model_name,
        pretrained=cfg.arch.pretrained,
    )
    if cfg.arch.maxpool == "avg":
        replace_maxpool(model)
    return model


def memory_plan(cfg, method: Method, profile: MemoryProfile, budget: int | None, device, phase: str) -> SimPlan | None:
    """Time chunk and micro-batch of `phase` ("evaluate", or "calibrate": None when the method needs no images)
    from the ANN's layer shapes (`snnconv.snn.memory`). `snn.time_chunk` > 0 is kept; 0 = the largest chunk that
    fits on accelerators, 1 on CPU. Raises SnnconvError when even one image does not fit, or when a calibration
    that cannot be split (FTBC) does not fit, naming the batch size that does."""
    steps = method.sim_steps(max(int(t) for t in cfg.T))
    batches, batch = (1, int(cfg.data.test_batch_size)) if phase == "evaluate" else method.calibration_images()
    if not batches:
        return None
    neuron_copies, state_copies = method.memory_needs(phase)
    plan = plan_simulation(profile, batch, steps, budget, max_chunk=default_time_chunk(device, steps),
                           chunk=int(cfg.snn.time_chunk), first_chunk=method.first_chunk, neuron_copies=neuron_copies,
                           state_copies=state_copies, what=f"{method.name} {phase}")
    if phase == "calibrate" and plan.micro_batch < batch and not method.calibration_splits:
        raise SnnconvError(
            f"{method.name} calibration of method.batch_size={batch} images does not fit the memory budget "
            f"({budget / GiB:.2f} GiB) and cannot be split (each update uses the whole batch); set "
            f"method.batch_size={plan.micro_batch} method.batches={math.ceil(batches * batch / plan.micro_batch)}"
            " (the same images), or raise snn.memory_fraction"
        )
    return plan


def check_environment(cfg, out_dir: str | Path) -> torch.device:
    """Before any work: the device exists, the output folder and (when a trained ANN or a fine-tuned SNN will be
    cached) the cache folder are writable; stale temporary files of killed writes there are removed. Returns the
    device (before `distributed.local_device` picks this rank's)."""
    device = resolve_device(cfg.device)
    out_dir = Path(out_dir)
    require_writable_dir(out_dir, "output_dir" if cfg.output_dir else "hydra.run.dir")
    remove_stale_tmp(out_dir)
    if (cfg.train.cache and not cfg.ann.checkpoint) or (cfg.finetune.name != "none" and cfg.finetune.cache):
        require_writable_dir(cfg.checkpoint_dir, "checkpoint_dir",
                             fix="set checkpoint_dir to a writable folder, or train.cache=false / finetune.cache=false")
        for tmp in remove_stale_tmp(cfg.checkpoint_dir):
            print(f"removed {tmp}, left by a write that was killed")
    return device


def run(cfg, out_dir: str | Path, progress: bool = True) -> dict:
    """Run the pipeline for `cfg` (a composed, validated Config) and write the outputs into `out_dir`.

    W&B (logger=wandb, rank 0) is opened before training, receives the training curves, and is closed with the
    results, or marked failed (exit code 1) when the run fails."""
    out_dir = Path(out_dir)
    distributed.init()  # no-op in one process, or when run.py / an earlier run joined already
    progress = progress and distributed.is_main()
    configure_numerics(cfg.numerics.allow_tf32, cfg.numerics.deterministic)
    device = distributed.local_device(check_environment(cfg, out_dir))
    reset_peak_memory(device)
    if cfg.train.sync_bn and distributed.is_distributed() and device.type != "cuda":
        raise SnnconvError(
            "train.sync_bn=true needs CUDA devices (torch's SyncBatchNorm refuses CPU tensors); "
            "use train.sync_bn=false here"
        )
    distributed.check_global_batch(int(cfg.data.batch_size))
    logger = cfg.logger if distributed.is_main() else None
    wb = WandbRun(logger, OmegaConf.to_container(cfg, resolve=True), cfg.task_name, out_dir)
    try:
        results = _pipeline(cfg, out_dir, device, progress, wb)
    except BaseException:
        wb.finish(exit_code=1)
        raise
    wb.finish(results)
    distributed.barrier()  # the files exist when any rank returns
    if progress:
        print(format_table(results))
        print(f"results in {out_dir}")
    return results


def _pipeline(cfg, out_dir: Path, device: torch.device, progress: bool, wb: WandbRun) -> dict:
    seed_everything(int(cfg.seed))
    T_list = sorted({int(t) for t in cfg.T})
    T_max = T_list[-1]
    timing: dict[str, float] = {}

    with distributed.main_first():  # rank 0 downloads / unpacks, then the others read its files
        loaders = build_loaders(cfg.data, seed=int(cfg.seed), device=device)
    model = build_ann(cfg, loaders.num_classes, loaders.in_chans).to(device)
    method = build_method(cfg.method)
    budget = device_budget(device, cfg.snn.memory_fraction, cfg.snn.memory_budget_gb)
    profile = profile_network(model, (loaders.in_chans, cfg.data.img_size, cfg.data.img_size))
    plans = {ph: p for ph in ("evaluate", "calibrate") if (p := memory_plan(cfg, method, profile, budget, device, ph))}
    example = next(iter(loaders.test))[0][:1].to(device)  # shapes only; the calibration subset may be empty
    plan = stats_plan(cfg, model, example)
    train_loader = distributed.distributed_train_loader(loaders.train, int(cfg.seed))  # B / W images per rank
    ann_info = load_or_train(cfg, model, train_loader, device, progress, log=wb.log)
    timing["train"] = round(ann_info.pop("seconds"), 3)
    model.eval()

    start = time.perf_counter()
    calib = distributed.shard_batches(loaders.calib)  # this rank's whole batches of the calibration subset
    calib = ProgressLoader(calib, f"{cfg.ann.name} calibration", disable=not progress)
    source_info = source_class(cfg.ann.name).calibrate(model, calib, cfg.ann, device)
    snn = convert(model, example)
    n_spiking = len(snn.neurons())
    time_chunk = int(cfg.snn.time_chunk) or default_time_chunk(device, T_max)  # fine-tuning's (not planned)
    calib_chunk = plans["calibrate"].chunk if "calibrate" in plans else time_chunk
    eval_chunk, micro = plans["evaluate"].chunk, plans["evaluate"].micro_batch
    method.progress = progress
    batches = calibration_batches(loaders, *method.calibration_images(), device)
    tuning = cfg.finetune.name != "none"
    # causal calibrations (FTBC's biases) cover the fine-tuning steps too when finetune.T > max(T)
    method.calibrate(snn, model, batches, max(T_max, int(cfg.finetune.T)) if tuning else T_max, calib_chunk)
    timing["calibrate"] = round(time.perf_counter() - start, 3)

    test = distributed.shard_batches(loaders.test, cfg.snn.eval_batches)
    tuned, before = None, None
    if tuning:
        if cfg.finetune.eval_before:  # a fresh method instance: COS diagnostics describe the final run only
            start = time.perf_counter()
            before = evaluate(snn, model, test, T_list, build_method(cfg.method), device, eval_chunk, 0, progress,
                              micro_batch=micro)
            timing["evaluate_before_finetune"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        tuned = load_or_finetune(cfg, snn, model, loaders.train.dataset, time_chunk, device, progress)
        distributed.broadcast_module(snn)
        timing["finetune"] = round(time.perf_counter() - start, 3)

    start = time.perf_counter()
    counter = SpikeCounter(plan) if plan is not None else None
    ev = evaluate(snn, model, test, T_list, method, device, eval_chunk, 0, progress, counter=counter, micro_batch=micro)
    timing["evaluate"] = round(time.perf_counter() - start, 3)

    latency = {str(t): method.latency(t, n_spiking) for t in T_list}
    results: dict = {
        "method": cfg.method.name,
        "ann": {"acc": ev["ann_acc"], **ann_info},
        "snn": {"acc": ev["acc"], "agreement": ev["agreement"], "spiking_layers": n_spiking},
        "latency_steps": {t: v["latency_steps"] for t, v in latency.items()},
        "timing_s": timing,
        "images": ev["images"],
        "test_images_available": len(loaders.test.dataset),
        "time_chunk": eval_chunk,
        "memory_plan": {
            phase: {"time_chunk": plan.chunk, "micro_batch": plan.micro_batch,
                    "predicted_peak_gb": round(plan.peak / GiB, 3),
                    "budget_gb": None if plan.budget is None else round(plan.budget / GiB, 3)}
            for phase, plan in plans.items()
        },
        "numerics": {**numerics_record(device), "train_amp_bf16": bool(cfg.train.amp) and device.type == "cuda",
                     "train_channels_last": bool(cfg.train.channels_last)},
        "device": str(device),
        "distributed": {"world_size": distributed.world_size(), "backend": distributed.backend(device)},
        "env": {"snnconv": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if any("pipelined_latency_steps" in v for v in latency.values()):
        results["pipelined_latency_steps"] = {t: v["pipelined_latency_steps"] for t, v in latency.items()}
    results["ann"].update(source_info or {})
    if counter is not None:
        results["stats"] = counter.summary(cfg.energy)
    sections = {key: diag for key, diag in method.result_sections().items() if diag}
    if tuned is not None:
        sections["finetune"] = {**tuned, "before": before["acc"] if before else None, "after": ev["acc"]}
    results.update(sections)
    results["sections"] = list(sections)

    results["config_hash"] = config_hash(results["config"])
    if distributed.is_main():
        write_local(out_dir, results)
    return results
