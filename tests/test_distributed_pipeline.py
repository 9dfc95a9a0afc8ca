"""The whole pipeline (runner.run) on 2 gloo ranks: the same numbers as one process on the same cached ANN,
rank 0 alone writes results files and the checkpoint cache, results.json records world size and backend; and
`torchrun --nproc_per_node=2 run.py` end to end (slow): one Hydra run directory, rank 0's files only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_utils import free_port, run_ranks
from snnconv import distributed
from snnconv.runner import run
from test_runner import ROOT, make_cfg

TINY = ("arch=resnet20", "data.img_size=16", "T=[1,2]", "train.epochs=1", "train.limit_batches=2",
        "data.test_batch_size=50", "data.limit_test=130")  # 3 test batches: 2 on rank 0, 1 of 30 images on rank 1


def _run(cfg, out_root: str) -> dict:
    results = run(cfg, Path(out_root) / f"rank{distributed.rank()}", progress=False)
    return {k: v for k, v in results.items() if k not in ("timing_s", "distributed")} | {
        "distributed": results["distributed"]
    }


def _without(results: dict, *keys: str) -> dict:
    drop = {"timing_s", "distributed", *keys}
    return {k: v for k, v in results.items() if k not in drop}


def test_pipeline_on_two_ranks_equals_one_process_and_rank0_writes(tmp_path):
    torch.set_num_threads(1)
    cfg = make_cfg(tmp_path, *TINY, "method=ftbc", "method.batches=2", "method.batch_size=8",
                   "method.iterations=1")
    one = run(cfg, tmp_path / "one", progress=False)  # trains and caches the ANN
    assert one["ann"]["source"] == "trained" and one["distributed"] == {"world_size": 1, "backend": None}
    ranks = run_ranks(_run, 2, tmp_path / "ret", cfg, str(tmp_path / "two"))
    for r in ranks:
        assert r["distributed"] == {"world_size": 2, "backend": "gloo"}
        assert r["ann"]["source"] == "cache" and r["images"] == 130
        ann_one = {k: v for k, v in one["ann"].items() if k not in ("source", "epochs", "loss", "train_acc")}
        assert {k: v for k, v in r["ann"].items() if k != "source"} == ann_one
        assert _without(r, "ann", "ftbc") == _without(one, "ann", "ftbc")  # accuracy, agreement per T
        assert _without(r["ftbc"], "seconds") == _without(one["ftbc"], "seconds")  # same biases' statistics
    assert _without(ranks[0], "ftbc") == _without(ranks[1], "ftbc")
    saved = json.loads((tmp_path / "two" / "rank0" / "results.json").read_text())
    assert saved["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert not (tmp_path / "two" / "rank1").exists()  # rank 1 wrote nothing
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 1


def _train_run(cfg, out_root: str) -> dict:
    return run(cfg, Path(out_root) / f"rank{distributed.rank()}", progress=False)


@pytest.mark.slow
def test_training_on_two_ranks_caches_once_and_ranks_agree(tmp_path):
    """DDP training inside the pipeline: rank 0 writes the cache entry, both ranks hold its weights after."""
    cfg = make_cfg(tmp_path, *TINY)
    a, b = run_ranks(_train_run, 2, tmp_path / "ret", cfg, str(tmp_path / "out"))
    assert a["ann"]["source"] == b["ann"]["source"] == "trained"
    assert _without(a) == _without(b)
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 1 and not (tmp_path / "out" / "rank1").exists()
    again = run(cfg, tmp_path / "again", progress=False)  # one process reads what the 2 ranks cached
    assert again["ann"]["source"] == "cache" and again["snn"] == a["snn"]


@pytest.mark.slow
def test_torchrun_two_ranks_one_run_directory(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        str(ROOT / "run.py"), *TINY, f"checkpoint_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path}/out/${{start_time:%H-%M-%S-%f}}",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "out").iterdir())
    assert len(runs) == 1, runs  # microsecond stamps: two ranks' own clocks would give two directories
    files = sorted(p.name for p in runs[0].iterdir())
    assert {"results.json", "results.csv", "accuracy_vs_T.png", ".hydra"} <= set(files)
    saved = json.loads((runs[0] / "results.json").read_text())
    assert saved["distributed"] == {"world_size": 2, "backend": "gloo"} and saved["images"] == 130
    assert done.stdout.count("ANN acc %") == 1  # the table is printed by rank 0 only
