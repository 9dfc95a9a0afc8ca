"""Many processes (ranks), one per GPU or CPU process, through torch.distributed.

Library: `torch.distributed` (NCCL for CUDA tensors, gloo for CPU tensors: one process group
"cpu:gloo,cuda:nccl" where CUDA exists, plain gloo elsewhere) and its `DistributedSampler`; the processes are
started by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by SLURM with one
task per GPU (`srun`, or Hydra's submitit launcher with `tasks_per_node=N`: SLURM_PROCID, SLURM_STEP_NUM_TASKS,
SLURM_LOCALID, SLURM_STEP_NODELIST; the rendezvous host is the step's first node). snnconv has no launcher.

One code path: every helper works in a single process (world size 1: reductions are identities, barriers no-ops,
shards the whole data set). Collective helpers (all_reduce_sum, all_gather_cat, broadcast_*, barrier,
main_first) must be called by EVERY rank, in the same order, or the ranks wait for each other until the
process group's timeout.

Sharding rules (why the numbers equal one process's):
- `shard_range(n)`: contiguous, balanced (sizes differ by at most 1), no padding, no duplicates.
- `shard_batches`: whole batches of the one-process loader to each rank, so every rank evaluates exactly the
  batches one process would (same images, same batch composition) and the summed counts are the same integers.
- `distributed_train_loader`: `DistributedSampler(seed, set_epoch)` with the recipe's batch size as the GLOBAL
  batch (B / W images per rank). Rank r takes positions r, r+W, ... of one permutation of seed + epoch, so the
  union of the ranks' i-th batches is the i-th block of B images of that permutation, whatever W is (W = 1
  included): the global batches do not depend on the number of ranks.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import math
import os
import re
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from snnconv import SnnconvError

TIMEOUT_MIN = 60  # a rank that waits longer than this at a collective fails (torch's default is 10-30 min)

_state: dict = {"local_rank": 0, "start": None}


def launch_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's or SLURM's environment; None for one process.

    torchrun: RANK / WORLD_SIZE / LOCAL_RANK. SLURM: SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID, set by
    `srun` for each task of a job step (not in an sbatch script's own shell, which is one process)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        found = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        found = int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0))
    else:
        return None
    return found if found[1] > 1 else None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-006,9],cpu1' -> 'gpu003', 'node7' -> 'node7'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise SnnconvError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR to the first node")
    prefix, ranges = match.groups()
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def _slurm_rendezvous(rank: int, world: int, local: int) -> None:
    """torch's env:// rendezvous variables from SLURM's (kept when the user set them)."""
    env = os.environ
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
    env.setdefault("MASTER_ADDR", first_host(nodes))
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))


def init() -> bool:
    """Join the process group described by the environment (idempotent); False when this is one process.

    Sets the CUDA device to LOCAL_RANK (modulo the visible devices) before joining. Raises SnnconvError when the
    launcher's variables are incomplete."""
    if dist.is_available() and dist.is_initialized():
        return True
    found = launch_env()
    if found is None:
        return False
    rank, world, local = found
    if "RANK" not in os.environ:
        _slurm_rendezvous(rank, world, local)
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise SnnconvError(
            f"RANK={rank} / WORLD_SIZE={world} are set but {', '.join(missing)} is not: start the ranks with "
            "torchrun --nproc_per_node=N run.py ... (or srun / hydra/launcher=slurm), which sets them"
        )
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(
        backend, rank=rank, world_size=world, timeout=_dt.timedelta(minutes=TIMEOUT_MIN)
    )
    _state["local_rank"] = local
    _state["start"] = broadcast_object(_dt.datetime.now())
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Leave the process group (registered at exit by `init`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return _state["local_rank"] if is_distributed() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes results, W&B and the checkpoint cache."""
    return rank() == 0


def backend(device: torch.device) -> str | None:
    """The backend that reduces `device`'s tensors ("nccl" / "gloo"), None in one process."""
    if not is_distributed():
        return None
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """`cuda` without an index -> this rank's GPU (`cuda:LOCAL_RANK` modulo the visible GPUs); others unchanged."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device


def start_time() -> _dt.datetime:
    """When this run started: rank 0's clock for every rank (broadcast by `init`), so Hydra's run directory
    `${start_time:...}` is the same on all ranks. One process: the time of the first call."""
    if _state["start"] is None:
        _state["start"] = _dt.datetime.now()
    return _state["start"]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download, unpacking, writing a cache entry); the others run it after it
    finished, e.g. to read what rank 0 wrote."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, IN PLACE (returns `tensor`). Integer tensors sum exactly; floats in the backend's order."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order: [n_0 + n_1 + ..., ...]. The n_r may differ
    (an uneven last shard, an empty one); the other dims must agree. With contiguous shards this is the tensor one
    process would have built, bit for bit (e.g. all calibration activations, for an exact percentile)."""
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    sizes = torch.tensor([tensor.shape[0]], device=tensor.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s) for s in all_sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s picklable `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank ([obj] in one process)."""
    if not is_distributed():
        return [obj]
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def _cpu(tree):
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    return tree.detach().cpu() if isinstance(tree, torch.Tensor) else tree


def _add_into(total: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add_into(total.setdefault(key, {}), value)
        else:
            total[key] = total[key] + value if key in total else value


def sum_over_ranks(tree: dict) -> dict:
    """Nested dicts of numbers / tensors summed over ranks key by key (a key a rank lacks adds nothing; tensors
    of one key must have one shape), on every rank, tensors on the CPU. Small trees (statistics, a few numbers
    per layer and T): one all_gather_object. Sums run in rank order: integer counts equal one process's; float
    sums differ from a one-process running sum only by summation order. One process: `tree` itself."""
    if not is_distributed():
        return tree
    total: dict = {}
    for part in gather_objects(_cpu(tree)):
        _add_into(total, part)
    return total


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer (the whole state dict) with rank `src`'s values."""
    if is_distributed():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=src)


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous share of range(n): sizes differ by at most 1 (the first n % W ranks get one more)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def local_rows(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous rows of a batch [B, ...] (`shard_range(B)`; a view). FTBC calibrates each batch on
    all ranks at once, every rank on its rows, the channel statistics summed over ranks."""
    mine = shard_range(batch.shape[0])
    return batch[mine.start : mine.stop]


def _rebuild(loader: DataLoader, **changes) -> DataLoader:
    """A DataLoader over the same data set with the same settings, except `changes` (sampler, batch size)."""
    kwargs = {
        "batch_size": loader.batch_size,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "drop_last": loader.drop_last,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "prefetch_factor": loader.prefetch_factor if loader.num_workers > 0 else None,
    }
    return DataLoader(loader.dataset, **{**kwargs, **changes})


def shard_batches(loader: DataLoader, max_batches: int = 0) -> DataLoader:
    """This rank's contiguous block of whole batches of an in-order `loader` (the first `max_batches` batches
    when > 0), as a loader with the same batch size: no image twice, none left out, the uneven last batch on the
    last rank that has batches. One process with max_batches = 0: `loader` itself."""
    n, size = len(loader.dataset), int(loader.batch_size)
    batches = math.ceil(n / size)
    if max_batches > 0:
        batches = min(batches, max_batches)
    elif world_size() == 1:
        return loader
    mine = shard_range(batches)
    images = range(mine.start * size, min(mine.stop * size, n))
    return _rebuild(loader, sampler=images, batch_size=size, drop_last=False)


def shard_images(loader: DataLoader) -> DataLoader:
    """This rank's contiguous share of an in-order `loader`'s images (`shard_range`: sizes differ by at most one),
    in batches of the loader's size: for computations that do not depend on the batching (the exact ReLU
    percentiles). One process: `loader` itself."""
    if world_size() == 1:
        return loader
    return _rebuild(loader, sampler=shard_range(len(loader.dataset)), drop_last=False)


def check_global_batch(batch_size: int) -> int:
    """The per-rank batch of a global `batch_size` (data.batch_size); SnnconvError when the ranks cannot share it
    evenly."""
    world = world_size()
    if batch_size % world:
        raise SnnconvError(
            f"data.batch_size={batch_size} (the global batch) is not a multiple of the {world} ranks; "
            f"set data.batch_size to a multiple of {world}"
        )
    return batch_size // world


def distributed_train_loader(loader: DataLoader, seed: int) -> DataLoader:
    """`loader` (shuffled training loader, batch = the recipe's GLOBAL batch B) as this rank's loader: a
    `DistributedSampler(shuffle, seed)` and B / W images per step. Call `sampler.set_epoch(epoch)` every epoch.

    The last partial batch of an epoch: the sampler repeats up to W - 1 images so that every rank has as many
    (torch's DistributedSampler behaviour); with W = 1 nothing is repeated. Raises SnnconvError when B is not a
    multiple of W."""
    size = check_global_batch(int(loader.batch_size))
    sampler = DistributedSampler(loader.dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    return _rebuild(loader, sampler=sampler, batch_size=size)
