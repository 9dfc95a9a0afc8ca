"""Run a function in W processes joined by torch.distributed (gloo on CPU), as torchrun would start them:
each process gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and calls snnconv.distributed.init().
`fn` must be importable (a module-level function); its return value comes back per rank, in rank order."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(local: int, world: int, port: int, fn, args: tuple, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local), WORLD_SIZE=str(world), LOCAL_RANK=str(local)
    )
    torch.set_num_threads(1)
    from snnconv import distributed

    assert distributed.init()
    try:
        result = fn(*args)
        torch.save(result, Path(out) / f"rank{local}.pt")
    finally:
        distributed.shutdown()


def run_ranks(fn, world: int, tmp: Path, *args) -> list:
    """fn(*args) on `world` ranks; returns [result of rank 0, rank 1, ...]."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    # fork: the children inherit the imported torch (a spawned child re-imports it: ~10 s on a busy 2-core machine)
    mp.start_processes(_entry, args=(world, free_port(), fn, args, str(tmp)), nprocs=world, start_method="fork")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]
