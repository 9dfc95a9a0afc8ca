"""scripts/collect.py and scripts/make_tables.py on a synthetic multirun tree (the table values are checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from snnconv.collect import comparison_markdown, load_runs, pivot, swept_keys

ROOT = Path(__file__).resolve().parents[1]


def fake_run(path: Path, method: str, alpha: float, passes: int, acc: dict, task: str = "x-ftbc") -> None:
    path.mkdir(parents=True)
    cfg = {"method": {"name": method, "alpha": alpha, "passes": passes}, "seed": 1, "task_name": task,
           "arch": {"name": "vgg16", "width": 0.25}, "ann": {"name": "qcfs", "L": 4, "percentile": 99.9},
           "train": {"epochs": 3}}
    res = {"method": method, "ann": {"acc": 90.0}, "snn": {"acc": {str(t): v for t, v in acc.items()},
           "spiking_layers": 15}, "latency_steps": {str(t): t for t in acc}, "timing_s": {"calibrate": 1.0,
           "evaluate": 2.0}, "images": 100, "config": cfg}
    if method == "offset_spike":
        res["latency_steps"] = {str(t): 4 * passes + t for t in acc}
        res["pipelined_latency_steps"] = {str(t): 60 * passes + t for t in acc}
        res["offset_spike"] = {"total": {"psi_zero_share": [80.0, 95.0], "psi_mse": [0.2, 0.05]}}
    (path / "results.json").write_text(json.dumps(res))


def test_pivot_labels_rows_by_the_swept_key(tmp_path):
    for i, alpha in enumerate((0.1, 0.5)):
        fake_run(tmp_path / f"{i}_alpha={alpha}", "ftbc", alpha, 1, {1: 10.0 + i, 4: 50.0 + i})
    runs = load_runs(tmp_path)
    assert swept_keys(runs) == ["method.alpha"]
    labels, Ts, table = pivot(runs)
    assert labels == ["method.alpha=0.1", "method.alpha=0.5"] and Ts == [1, 4]
    assert table["method.alpha=0.5"] == {1: 11.0, 4: 51.0}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "| method.alpha=0.1 | 10.00 | 50.00 |" in out
    assert (tmp_path / "collect.png").read_bytes()[:4] == b"\x89PNG"


def test_make_tables_puts_methods_side_by_side_with_latency(tmp_path):
    exp = tmp_path / "cpu_exp"
    fake_run(exp / "0_baseline", "baseline", 0.5, 1, {1: 10.0, 2: 20.0})
    fake_run(exp / "cos" / "0_p1", "offset_spike", 0.5, 1, {1: 70.0, 2: 80.0})
    fake_run(exp / "cos" / "1_p2", "offset_spike", 0.5, 2, {1: 75.0, 2: 85.0})
    out = tmp_path / "docs" / "results.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tables.py"), str(tmp_path), "--out", str(out),
                    "--wall-time", "120"], check=True, capture_output=True)
    text = out.read_text()
    assert "| T | ANN | baseline | COS x1 (latency / pipelined) | COS x2 (latency / pipelined) |" in text
    assert "| 1 | 90.00 | 10.00 | 70.00 (5 / 61) | 75.00 (9 / 121) |" in text
    assert "80.000 / 95.000" in text and "2.0 min" in text and "summed over the 3 runs: 0.1 min" in text
    assert (out.parent / "results_cpu_exp.png").is_file()
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect.py"), str(tmp_path / "nothing")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_comparison_table_has_latency_and_stats_columns(tmp_path):
    fake_run(tmp_path / "0_baseline", "baseline", 0.5, 1, {1: 10.0, 2: 20.0})
    fake_run(tmp_path / "1_cos", "offset_spike", 0.5, 1, {1: 70.0, 2: 80.0})
    res = json.loads((tmp_path / "1_cos" / "results.json").read_text())
    res["stats"] = {"total_sops": {"1": 1234567.0, "2": 2e6}, "firing_rate": {"1": 0.1234, "2": 0.1},
                    "energy_pj": {"1": {"ratio": 0.25}, "2": {"ratio": 0.4}},
                    "cost": {"preset": "fp32-45nm", "e_mac": 4.6, "e_ac": 0.9}}
    (tmp_path / "1_cos" / "results.json").write_text(json.dumps(res))
    text = comparison_markdown(load_runs(tmp_path), ["method.name"])
    assert "| run | T | acc % | latency | pipelined | SOPs/img | fr % | E/E_ANN |" in text
    assert "| baseline | 1 | 10.00 | 1 | - | - | - | - |" in text
    assert "| offset_spike | 1 | 70.00 | 5 | 61 | 1.23M | 12.34 | 0.250 |" in text
    assert "compute-only, no memory traffic" in text.splitlines()[-1]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect.py"), str(tmp_path), "--keys", "method.name",
                          "--compare-only"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("| run | T | acc % |") and "| offset_spike | 2 | 80.00 | 6 | 62 | 2M | 10.00 | 0.400 |" in out


def test_collect_keeps_latency_and_lists_jobs_without_results(tmp_path):
    fake_run(tmp_path / "0_p1", "offset_spike", 0.5, 1, {1: 70.0, 2: 80.0})
    fake_run(tmp_path / "1_p2", "offset_spike", 0.5, 2, {1: 75.0, 2: 85.0})
    failed = tmp_path / "2_p0"
    (failed / ".hydra").mkdir(parents=True)
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "method.passes must be >= 1"}))
    (tmp_path / "3_killed" / ".hydra").mkdir(parents=True)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "| run | T=1 | T=2 | test images |" in out
    assert "| method.passes=1 | 70.00 (5 / 61) | 80.00 (6 / 62) | 100 |" in out  # COS at T=1: 5 steps
    assert "2 of 4 jobs have no results (not in the table):" in out
    assert "- 2_p0: method.passes must be >= 1" in out and "- 3_killed: no status (killed, or still running)" in out


def test_swept_keys_drop_the_keys_that_follow_from_the_method(tmp_path):
    """method=baseline,ftbc: FTBC's own fields (None for the baseline) differ too but add no row of their own;
    a second swept key that does split runs of one method is kept."""
    fake_run(tmp_path / "0", "baseline", None, None, {1: 10.0})
    fake_run(tmp_path / "1", "ftbc", 0.5, None, {1: 80.0})
    assert swept_keys(load_runs(tmp_path)) == ["method.name"]
    fake_run(tmp_path / "2", "ftbc", 0.3, None, {1: 85.0})
    assert swept_keys(load_runs(tmp_path)) == ["method.alpha", "method.name"]
    fake_run(tmp_path / "3", "offset_spike", None, 2, {1: 70.0})
    assert swept_keys(load_runs(tmp_path)) == ["method.alpha", "method.name"]  # passes follows from the method
