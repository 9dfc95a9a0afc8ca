"""The pipeline end to end on the embedded digits: outputs are complete, W&B offline writes its run file, the
checkpoint cache is reused, a converted QCFS network approaches its ANN as T grows, and user errors exit with
one line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from snnconv import SnnconvError
from snnconv.config import validate
from snnconv.runner import run

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("arch=resnet20", "data.img_size=16")


def make_cfg(tmp_path: Path, *overrides: str):
    cfg = compose_config(f"checkpoint_dir={tmp_path / 'ckpt'}", *overrides)
    validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo's QCFS (L=4) ResNet-20 and recipe on digits at 16x16 (the 8x8 originals lose nothing; 4x cheaper
    than 32x32): ~1 min on 2 cores, evaluated up to T=64."""
    tmp = tmp_path_factory.mktemp("digits")
    cfg = make_cfg(
        tmp, *SMALL, "T=[1,2,4,8,16,32,64]",
        "logger=wandb", "logger.mode=offline",
    )
    start = time.perf_counter()
    results = run(cfg, tmp / "run1", progress=False)
    return tmp, cfg, results, time.perf_counter() - start


def test_results_files_are_complete(trained):
    tmp, cfg, results, _ = trained
    out = tmp / "run1"
    saved = json.loads((out / "results.json").read_text())
    assert saved["ann"]["acc"] == results["ann"]["acc"] > 90
    assert list(saved["snn"]["acc"]) == ["1", "2", "4", "8", "16", "32", "64"]
    assert saved["latency_steps"] == {t: int(t) for t in saved["snn"]["acc"]}
    assert set(saved["timing_s"]) == {"train", "calibrate", "evaluate"}
    assert saved["config"]["arch"]["name"] == "resnet20" and saved["config"]["T"] == [1, 2, 4, 8, 16, 32, 64]
    assert saved["ann"]["source"] == "trained" and saved["images"] == 360
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [int(r["T"]) for r in rows] == [1, 2, 4, 8, 16, 32, 64]
    assert float(rows[-1]["snn_acc"]) == saved["snn"]["acc"]["64"]
    assert (out / "accuracy_vs_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = saved["stats"]  # stats=true by default: read from the same T_max simulation
    assert list(stats["total_sops"]) == list(saved["snn"]["acc"]) and len(stats["per_layer"]) == 19
    assert 0 < stats["total_sops"]["1"] < stats["total_sops"]["64"] and stats["images"]["64"] == 360
    assert float(rows[-1]["sops_per_image"]) == stats["total_sops"]["64"]
    assert float(rows[0]["energy_ratio"]) == stats["energy_pj"]["1"]["ratio"]
    for png in ("firing_rate_per_layer.png", "accuracy_vs_sops.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_offline_wandb_run_file_is_written(trained):
    tmp, *_ = trained
    runs = list((tmp / "run1" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), list(runs[0].iterdir())


def test_qcfs_snn_approaches_the_ann_as_T_grows(trained):
    _, _, results, _ = trained
    acc, agree, ann = results["snn"]["acc"], results["snn"]["agreement"], results["ann"]["acc"]
    assert acc["64"] >= ann - 3.0, results
    assert acc["64"] > acc["1"] + 10 and agree["64"] > agree["2"]
    assert agree["64"] >= 90.0
    assert min(acc[t] for t in ("16", "32", "64")) > max(acc[t] for t in ("1", "2"))


def test_the_cache_trains_once_and_methods_reuse_it(trained):
    tmp, _, first, _ = trained
    cfg = make_cfg(tmp, *SMALL, "T=[1,2,4]", "method=offset_spike")
    again = run(cfg, tmp / "run2", progress=False)
    assert again["ann"]["source"] == "cache" and again["ann"]["acc"] == first["ann"]["acc"]
    assert again["latency_steps"] == {"1": 5, "2": 6, "4": 8}
    assert again["pipelined_latency_steps"]["4"] == again["snn"]["spiking_layers"] * 4 + 4
    assert again["offset_spike"]["psi_zero_share_after"] >= again["offset_spike"]["psi_zero_share_before"]


def test_a_checkpoint_that_does_not_fit_is_refused(trained, tmp_path):
    tmp, *_ = trained
    ckpt = next((tmp / "ckpt").glob("*.pt"))
    cfg = make_cfg(tmp_path, "arch=vgg16", f"ann.checkpoint={ckpt}", "T=[1]")
    with pytest.raises(SnnconvError, match="does not fit .* missing keys"):
        run(cfg, tmp_path / "out", progress=False)
    state = torch.load(ckpt, weights_only=True)
    good = make_cfg(tmp_path, *SMALL, f"ann.checkpoint={ckpt}", "T=[1]")
    assert run(good, tmp_path / "out2", progress=False)["ann"]["source"] == "checkpoint"
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    bad = make_cfg(tmp_path, *SMALL, f"ann.checkpoint={tmp_path / 'bad.pt'}", "T=[1]")
    with pytest.raises(SnnconvError, match="unexpected keys extra.weight"):
        run(bad, tmp_path / "out3", progress=False)


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={cwd / 'out'}", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def test_missing_data_set_exits_nonzero_with_one_line(tmp_path):
    proc = _run_cli("data=cifar100", "arch=vgg16", "data.root=/nonexistent", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "outputs" / "checkpoints").exists()  # refused before any training (no timing test)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CIFAR-100" in lines[0] and "data.root=/nonexistent" in lines[0], proc.stderr


@pytest.mark.parametrize("override", ["T=4", "method=nonexistent", "'T=[0]'"])
def test_bad_overrides_exit_nonzero_without_a_traceback(tmp_path, override):
    proc = _run_cli(override.strip("'"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr


def test_calibration_request_larger_than_the_subset_is_refused(trained):
    """method.batches x method.batch_size beyond data.calib_size used to be cut silently to what was there; it is
    refused before any work, and only for methods that calibrate on images (the baseline needs none)."""
    tmp, _, _, _ = trained
    with pytest.raises(SnnconvError, match=r"method.batches=9 x method.batch_size=64 = 576 training images but "
                                           r"the calibration subset holds 512; raise data.calib_size"):
        make_cfg(tmp, *SMALL, "T=[1,2]", "method=ftbc", "method.batches=9", "method.batch_size=64", "data.calib_size=512")
    make_cfg(tmp, *SMALL, "T=[1,2]", "method=baseline", "data.calib_size=16")  # validates


def test_finetune_runs_between_calibration_and_evaluation(trained):
    """finetune=localzo on the cached ANN: the accuracy before fine-tuning is exactly the plain run's (the same
    calibrated network on the same test images), the fine-tuned one is what the run reports, and the section,
    timings, table and CSV carry both."""
    tmp, _, first, _ = trained
    cfg = make_cfg(tmp, *SMALL, "T=[1,2,4]", "finetune=localzo", "finetune.T=2", "finetune.epochs=0.1",
                   "finetune.lr=1e-3", "finetune.ann_timing_batches=1")
    res = run(cfg, tmp / "run_ft", progress=False)
    ft = res["finetune"]
    assert ft["before"] == {t: first["snn"]["acc"][t] for t in ("1", "2", "4")}
    assert ft["after"] == res["snn"]["acc"] != ft["before"]
    assert ft["steps"] == 3 and ft["T"] == 2 and "finetune" in res["sections"]
    assert {"finetune", "evaluate_before_finetune"} <= set(res["timing_s"])
    assert 0 < ft["backward_sparsity"]["total"] < 1 and len(ft["backward_sparsity"]["layers"]) == 19
    rows = list(csv.DictReader((tmp / "run_ft" / "results.csv").open()))
    assert [float(r["snn_acc_before_finetune"]) for r in rows] == list(ft["before"].values())


def test_the_fine_tuned_snn_is_cached_by_content_and_cos_reuses_the_baselines(trained):
    """The previous test's fine-tuning, asked again with more T values and by COS (whose shift is a test-time step,
    so it converts to the same network): both load the cache entry the baseline run wrote instead of fine-tuning
    again, and the rerun reports the same accuracies and section (other options, other entries: test_finetune.py)."""
    tmp, *_ = trained
    ft = ("finetune=localzo", "finetune.T=2", "finetune.epochs=0.1", "finetune.lr=1e-3",
          "finetune.ann_timing_batches=1")
    first = run(make_cfg(tmp, *SMALL, "T=[1,2,4]", *ft), tmp / "ft_first", progress=False)["finetune"]
    assert first["source"] in ("trained", "cache") and Path(first["path"]).is_file()
    again = run(make_cfg(tmp, *SMALL, "T=[1,2,4,8]", "finetune.eval_before=false", *ft), tmp / "ft_again",
                progress=False)
    assert again["finetune"]["source"] == "cache" and again["finetune"]["key"] == first["key"]
    assert {t: again["snn"]["acc"][t] for t in ("1", "2", "4")} == first["after"]
    assert again["finetune"]["train_loss"] == first["train_loss"]
    cos = run(make_cfg(tmp, *SMALL, "T=[1,2]", "method=offset_spike", *ft), tmp / "ft_cos", progress=False)
    assert cos["finetune"]["source"] == "cache" and cos["finetune"]["key"] == first["key"]
    assert cos["finetune"]["before"] != first["before"]  # COS itself ran: a different network at test time


def test_ftbc_biases_are_calibrated_for_a_longer_finetune_T_and_trained(trained):
    """finetune.T = 4 > max(T) = 2: FTBC calibrates 4 steps (causal: the first 2 are those of a 2-step
    calibration) and fine-tuning trains them."""
    tmp, *_ = trained
    cfg = make_cfg(tmp, *SMALL, "T=[1,2]", "method=ftbc", "method.iterations=1", "method.batches=2",
                   "finetune=surrogate", "finetune.T=4", "finetune.epochs=0.05", "finetune.eval_before=false",
                   "finetune.ann_timing_batches=1")
    res = run(cfg, tmp / "run_ft_ftbc", progress=False)
    ft = res["finetune"]
    assert ft["before"] is None and ft["T"] == 4 and ft["trained"]["ftbc_biases"] > 0
    assert res["ftbc"]["steps"] == 4


def test_a_tiny_memory_budget_micro_batches_the_evaluation_and_changes_nothing(trained):
    """snn.memory_budget_gb small enough that the 360 test images are evaluated 50 at a time (planned from the
    layer shapes before any work): the same accuracies as one whole batch; the plan is recorded."""
    from snnconv.methods import build_method
    from snnconv.runner import build_ann
    from snnconv.snn.memory import GiB, predicted_peak, profile_network

    tmp, *_ = trained
    base = make_cfg(tmp, *SMALL, "T=[1,2,4]", "method=offset_spike")
    cos = build_method(base.method)
    profile = profile_network(build_ann(base, 10, 1), (1, 16, 16))
    budget = predicted_peak(profile, 360, 50, 1, cos.sim_steps(4), cos.first_chunk, *cos.memory_needs("evaluate"))
    small = make_cfg(tmp, *SMALL, "T=[1,2,4]", "method=offset_spike", f"snn.memory_budget_gb={budget / GiB!r}")
    whole, split = run(base, tmp / "whole", progress=False), run(small, tmp / "split", progress=False)
    assert whole["memory_plan"]["evaluate"]["micro_batch"] == 360
    assert split["memory_plan"]["evaluate"] == {"time_chunk": 1, "micro_batch": 50,  # CPU: chunk 1 (first: rho)
                                                "predicted_peak_gb": round(budget / GiB, 3),
                                                "budget_gb": round(budget / GiB, 3)}
    assert split["snn"] == whole["snn"] and split["offset_spike"] == whole["offset_spike"]
    assert split["numerics"]["allow_tf32_cudnn"] is False and split["numerics"]["device"] == "cpu"
    # FTBC cannot split its calibration batch: refused before any work, naming the batch size that fits
    ftbc_cfg = make_cfg(tmp, *SMALL, "T=[1,2,4]", "method=ftbc")
    ftbc = build_method(ftbc_cfg.method)
    batches, size = ftbc.calibration_images()
    half = predicted_peak(profile, size, size // 2, 1, 4, 0, *ftbc.memory_needs("calibrate"))  # fits half a batch
    ftbc_cfg.snn.memory_budget_gb = half / GiB
    with pytest.raises(SnnconvError, match=rf"cannot be split .* set method.batch_size={size // 2} "
                                           rf"method.batches={2 * batches} \(the same images\)"):
        run(ftbc_cfg, tmp / "ftbc", progress=False)
