"""snnconv.distributed: shards, launcher environments, and the collectives on 2 gloo ranks (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from dist_utils import run_ranks
from snnconv import SnnconvError, distributed


@pytest.mark.parametrize("n, world", [(10, 3), (2, 3), (7, 1), (0, 2), (9, 2)])
def test_shard_range_contiguous_balanced(n, world):
    shards = [distributed.shard_range(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))  # every index once, in order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_range_hand_computed():
    assert [distributed.shard_range(10, r, 3) for r in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]


def test_first_host():
    assert distributed.first_host("gpu[003-006,9],cpu1") == "gpu003"
    assert distributed.first_host("node7") == "node7"
    assert distributed.first_host("a1,b2") == "a1"


def test_launch_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.launch_env() is None
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")  # an sbatch script's own shell: one process, not a rank
    assert distributed.launch_env() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed.launch_env() == (5, 8, 1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun's variables win; one rank is one process
    assert distributed.launch_env() is None


def test_init_refuses_incomplete_torchrun_env(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SnnconvError, match="torchrun"):
        distributed.init()


def test_one_process_helpers_are_identities():
    t = torch.arange(5)
    assert distributed.all_reduce_sum(t) is t and distributed.all_gather_cat(t) is t
    assert distributed.world_size() == 1 and distributed.is_main() and distributed.backend(torch.device("cpu")) is None
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=4)
    assert distributed.shard_batches(loader) is loader
    assert [b[0].tolist() for b in distributed.shard_batches(loader, max_batches=2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def _collectives(tmp: str) -> dict:
    r = distributed.rank()
    out: dict = {"rank": r, "world": distributed.world_size(), "start": distributed.start_time()}
    out["sum"] = distributed.all_reduce_sum(torch.tensor([r + 1, 10 * (r + 1)])).tolist()
    local = torch.arange(3 - r, dtype=torch.float32).view(-1, 1) + 100 * r  # 3 rows on rank 0, 2 on rank 1
    out["gathered"] = distributed.all_gather_cat(local).flatten().tolist()
    out["empty_gathered"] = distributed.all_gather_cat(torch.ones(r, 2)).shape  # rank 0 holds none
    out["object"] = distributed.broadcast_object({"dir": f"from rank {r}"})
    torch.manual_seed(r)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    distributed.broadcast_module(net)
    out["state"] = {k: v.clone() for k, v in net.state_dict().items()}
    marker = Path(tmp) / "written_by_rank0"
    with distributed.main_first():
        if distributed.is_main():
            marker.write_text("rank 0")
        out["read"] = marker.read_text()  # the other rank reads it only after rank 0 left the block
    loader = DataLoader(TensorDataset(torch.arange(11)), batch_size=3)
    out["test_batches"] = [b[0].tolist() for b in distributed.shard_batches(loader)]
    out["test_batches_max"] = [b[0].tolist() for b in distributed.shard_batches(loader, max_batches=3)]
    train = DataLoader(TensorDataset(torch.arange(12)), batch_size=4, shuffle=True)
    mine = distributed.distributed_train_loader(train, seed=7)
    out["train"] = []
    for epoch in range(2):
        mine.sampler.set_epoch(epoch)
        out["train"].append([b[0].tolist() for b in mine])
    return out


def test_collectives_on_two_ranks(tmp_path):
    a, b = run_ranks(_collectives, 2, tmp_path / "out", str(tmp_path))
    assert (a["rank"], b["rank"], a["world"], b["world"]) == (0, 1, 2, 2)
    assert a["start"] == b["start"]  # rank 0's clock on both: one Hydra run directory
    assert a["sum"] == b["sum"] == [3, 30]
    assert a["gathered"] == b["gathered"] == [0.0, 1.0, 2.0, 100.0, 101.0]  # rank order, uneven sizes
    assert a["empty_gathered"] == b["empty_gathered"] == (1, 2)
    assert a["object"] == b["object"] == {"dir": "from rank 0"}
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key])
    assert a["read"] == b["read"] == "rank 0"
    # whole batches of the one-process loader ([0,1,2] [3,4,5] [6,7,8] [9,10]), contiguous blocks per rank
    assert a["test_batches"] == [[0, 1, 2], [3, 4, 5]] and b["test_batches"] == [[6, 7, 8], [9, 10]]
    assert a["test_batches_max"] == [[0, 1, 2], [3, 4, 5]] and b["test_batches_max"] == [[6, 7, 8]]
    # global batch 4 = 2 per rank; the union of the ranks' i-th batches is block i of randperm(12, seed + epoch)
    for epoch in range(2):
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        for i in range(3):
            assert sorted(a["train"][epoch][i] + b["train"][epoch][i]) == sorted(perm[4 * i : 4 * i + 4])
    assert a["train"][0] != a["train"][1]  # set_epoch reshuffles


def test_train_loader_refuses_batch_not_multiple_of_world(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    with pytest.raises(SnnconvError, match="multiple of 3"):
        distributed.distributed_train_loader(DataLoader(TensorDataset(torch.arange(8)), batch_size=4), seed=0)
