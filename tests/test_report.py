"""Tests for snnconv.report: terminal table, local files, and W&B (offline / disabled / failing)."""

from __future__ import annotations

import csv
import json
import os
import socket

import pytest
from omegaconf import OmegaConf

from snnconv import report
from snnconv.config import LoggerConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results():
    return {
        "ann": {"acc": 91.2},
        "snn": {"acc": {"1": 10.3, "2": 40.1, "4": 80.0}, "agreement": {"1": 12.0, "2": 45.5, "4": 86.25}},
        "latency_steps": {"1": 5, "2": 6, "4": 8},
        "pipelined_latency_steps": {"1": 61, "2": 62, "4": 64},
        "timing_s": {"train": 12.0, "calibrate": 0.5, "evaluate": 3.2},
        "method": "offset_spike",
        "config": {
            "method": {"name": "offset_spike", "rho": 4},
            "arch": {"name": "resnet20"},
            "data": {"name": "digits"},
            "T": [1, 2, 4],
        },
        "offset_spike": {"n_shifted": 3, "mean_shift": {"layer1": 0.25}, "note": "text is skipped"},
        "sections": ["offset_spike"],
    }


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Quiet, isolated W&B with no network: any Python-side DNS lookup / TCP connect fails the test."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)  # log_wandb sets it for offline runs
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    attempts: list = []

    def no_network(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return attempts


def _logger(mode: str):
    return OmegaConf.structured(LoggerConfig(name="wandb", mode=mode, project="snnconv-test", tags=["unit"]))


def test_format_table(results):
    table = report.format_table(results)
    lines = table.splitlines()
    assert "latency" in lines[0] and "pipelined" in lines[0] and "agreement" in lines[0]
    for t, acc, agr in (("1", "10.30", "12.00"), ("2", "40.10", "45.50"), ("4", "80.00", "86.25")):
        row = next(line for line in lines[2:] if line.split("|")[0].strip() == t)
        assert acc in row and agr in row
    assert "91.20" in lines[-1]


def test_format_table_without_optional_columns(results):
    del results["pipelined_latency_steps"]
    del results["snn"]["agreement"]
    header = report.format_table(results).splitlines()[0]
    assert "pipelined" not in header and "agreement" not in header


def test_write_local(tmp_path, results):
    paths = report.write_local(tmp_path / "run", results)
    assert set(paths) == {"json", "csv", "png"}
    assert all(p.parent == tmp_path / "run" for p in paths.values())

    loaded = json.loads(paths["json"].read_text())
    assert loaded == results
    for key in ("ann", "snn", "latency_steps", "timing_s", "method", "config"):
        assert key in loaded
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no temp files left behind

    with paths["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["T"] for r in rows] == ["1", "2", "4"]
    assert list(rows[0]) == list(report.CSV_COLUMNS)
    assert rows[2] == {
        "T": "4",
        "latency_steps": "8",
        "pipelined_latency_steps": "64",
        "snn_acc": "80.0",
        "agreement": "86.25",
        "ann_acc": "91.2",
        "method": "offset_spike",
        "sops_per_image": "",
        "firing_rate": "",
        "energy_ratio": "",
        "snn_acc_before_finetune": "",
        "test_images": "",  # results without an image count: empty cells, not a guess
        "test_images_available": "",
    }

    png = paths["png"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_write_local_minimal(tmp_path, results):
    """Absent optional keys give empty CSV cells; a single T still plots."""
    results = {k: v for k, v in results.items() if k not in ("pipelined_latency_steps", "offset_spike")}
    results["snn"] = {"acc": {"8": 70.0}}
    results["latency_steps"] = {"8": 8}
    paths = report.write_local(tmp_path, results)
    with paths["csv"].open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["pipelined_latency_steps"] == "" and row["agreement"] == "" and row["snn_acc"] == "70.0"
    assert paths["png"].read_bytes().startswith(PNG_MAGIC)


def test_log_wandb_skipped_when_logger_is_none(tmp_path, results):
    cfg = OmegaConf.structured(LoggerConfig(name="none"))
    assert report.log_wandb(cfg, results, "run", tmp_path) is None
    assert not (tmp_path / "wandb").exists()


def test_log_wandb_offline(tmp_path, results, wandb_env):
    out = tmp_path / "run"
    report.write_local(out, results)
    run_dir = report.log_wandb(_logger("offline"), results, "T-sweep", out)

    assert run_dir is not None and run_dir.parent == out / "wandb"
    assert run_dir.name.startswith("offline-run-")
    (log,) = list(run_dir.glob("run-*.wandb"))
    assert log.stat().st_size > 0
    (table_file,) = list(run_dir.glob("files/media/table/snn_acc_vs_T*.table.json"))
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["T", "latency_steps", "snn_acc"]
    assert table["data"] == [[1, 5, 10.3], [2, 6, 40.1], [4, 8, 80.0]]
    assert wandb_env == []  # no DNS lookup / TCP connection from this process
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"  # else wandb probes its server at exit

    # a second run in the same process works (finished in `finally`, reinit="create_new")
    second = report.log_wandb(_logger("offline"), results, "again", out)
    assert second is not None and second != run_dir and list(second.glob("run-*.wandb"))
    assert json.loads((out / "results.json").read_text()) == results


def test_log_wandb_failure_is_contained(tmp_path, results, wandb_env, monkeypatch, capsys):
    import wandb

    def boom(*args, **kwargs):
        raise RuntimeError("no W&B today\nsecond line")

    out = tmp_path / "run"
    paths = report.write_local(out, results)
    before = {k: p.read_bytes() for k, p in paths.items()}
    monkeypatch.setattr(wandb, "init", boom)

    assert report.log_wandb(_logger("online"), results, "run", out) is None
    err = capsys.readouterr().err.strip()
    assert err.startswith("W&B logging failed (RuntimeError: no W&B today second line)")
    assert err.endswith(f"local results are in {out}") and "\n" not in err
    assert {k: p.read_bytes() for k, p in paths.items()} == before


def test_log_wandb_disabled_writes_nothing(tmp_path, results, wandb_env):
    out = tmp_path / "run"
    assert report.log_wandb(_logger("disabled"), results, "run", out) is None
    assert not (out / "wandb").exists()


def test_summary_flattens_numeric_diagnostics(results):
    summary = report._summary(results)
    assert summary["ann/acc"] == 91.2
    assert summary["snn/acc_T4"] == 80.0 and summary["snn/agreement_T2"] == 45.5
    assert summary["timing_s/train"] == 12.0
    assert summary["offset_spike/n_shifted"] == 3
    assert summary["offset_spike/mean_shift/layer1"] == 0.25
    assert "offset_spike/note" not in summary


@pytest.fixture
def stats_results(results):
    """results with a real `stats` section: snnconv.stats on the hand-counted Tiny network at T = 1, 2, 4."""
    from test_stats import X_TINY, Tiny, count

    summary, _ = count(Tiny().eval(), X_TINY, [1, 2, 4])
    return {**results, "stats": summary}


def test_stats_columns_in_table_csv_and_plots(tmp_path, stats_results):
    stats = stats_results["stats"]
    lines = report.format_table(stats_results).splitlines()
    assert all(h in lines[0] for h in ("SOPs/img", "fr %", "E/E_ANN"))
    row4 = next(line for line in lines[2:] if line.split("|")[0].strip() == "4")
    assert stats["total_sops"]["4"] == (168 + 768) * 4 + 80 * 2  # hand count (tests/test_stats.py)
    assert "3.9k" in row4 and f"{stats['energy_pj']['4']['ratio']:.3f}" in row4
    assert lines[-1].startswith("E/E_ANN: fp32-45nm (E_MAC 4.6 pJ, E_AC 0.9 pJ)")
    assert lines[-1].endswith("compute-only, no memory traffic")
    paths = report.write_local(tmp_path, stats_results)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [float(r["sops_per_image"]) for r in rows] == [stats["total_sops"][t] for t in ("1", "2", "4")]
    assert float(rows[1]["energy_ratio"]) == stats["energy_pj"]["2"]["ratio"]
    assert float(rows[1]["firing_rate"]) == stats["firing_rate"]["2"]
    for key in ("firing_rate_png", "sops_png"):
        assert paths[key].read_bytes().startswith(PNG_MAGIC)
    summary = report._summary(stats_results)
    assert summary["snn/sops_per_image_T4"] == stats["total_sops"]["4"]


def test_log_wandb_offline_with_stats(tmp_path, stats_results, wandb_env):
    out = tmp_path / "run"
    report.write_local(out, stats_results)
    run_dir = report.log_wandb(_logger("offline"), stats_results, "stats", out)
    assert run_dir is not None and wandb_env == []
    (table_file,) = list(run_dir.glob("files/media/table/stats/per_layer*.table.json"))
    table = json.loads(table_file.read_text())
    assert table["columns"][:3] == ["layer_index", "layer", "T"] and len(table["data"]) == 3 * 3
    assert len(list(run_dir.glob("files/media/images/stats/*.png"))) == 2


def test_finetune_section_adds_the_before_column_everywhere(tmp_path, results):
    results["finetune"] = {
        "name": "localzo", "T": 2, "epochs": 0.5, "seconds_per_epoch": 30.0, "ratio_to_ann_epoch": 6.5,
        "before": {"1": 5.5, "2": 33.25, "4": 79.0}, "after": results["snn"]["acc"],
        "backward_sparsity": {"total": 0.71, "layers": {"layer1.act1": 0.7}},
    }
    results["sections"] = [*results.get("sections", []), "finetune"]
    lines = report.format_table(results).splitlines()
    assert "before FT %" in lines[0]
    row = next(line for line in lines[2:] if line.split("|")[0].strip() == "2")
    assert "33.25" in row and "40.10" in row
    assert "localzo at T=2, 0.5 epochs" in lines[-1] and "6.5 x an ANN epoch" in lines[-1] and "71.0 %" in lines[-1]
    paths = report.write_local(tmp_path, results)
    with paths["csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["snn_acc_before_finetune"] for r in rows] == ["5.5", "33.25", "79.0"]
    summary = report._summary(results)
    assert summary["snn/snn_acc_before_finetune_T4"] == 79.0
    assert summary["finetune/backward_sparsity/layers/layer1.act1"] == 0.7
    assert "cache" not in lines[-1]
    results["finetune"].update(source="cache", path="/ckpt/digits-resnet20-qcfs-ft-localzo-0123.pt")
    assert report.format_table(results).splitlines()[-1].endswith(
        "(loaded from cache digits-resnet20-qcfs-ft-localzo-0123.pt)")
