"""Turn a `make reproduce-cpu` output tree into docs/results.md (tables + one PNG per network).

    python scripts/make_tables.py outputs/reproduce-cpu --out docs/results.md [--wall-time SECONDS] [--command CMD]

Layout read: <root>/<experiment>/**/results.json (one per method run), <root>/alpha_sweep/**/results.json,
<root>/bench_*.txt. Columns: ANN | baseline | COS x1 | COS x2 | FTBC | FTBC+COS, accuracy in % at each T, with
the steps each layer integrates (latency) for the COS columns; for runs with `stats=true` a second table per
network: method x T with accuracy, latency, SOPs per image, network firing rate and energy ratio to the ANN.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

from snnconv.collect import comparison_markdown, load_runs, markdown, pivot_markdown, plot

COLUMNS = [  # (header, method name, passes or None)
    ("baseline", "baseline", None),
    ("COS x1", "offset_spike", 1),
    ("COS x2", "offset_spike", 2),
    ("FTBC", "ftbc", None),
    ("FTBC+COS", "ftbc_offset_spike", None),
]


def column_of(run: dict) -> str | None:
    method = run.get("method")
    passes = (run.get("config") or {}).get("method", {}).get("passes")
    for header, name, p in COLUMNS:
        if method == name and (p is None or p == passes):
            return header
    return None


def experiment_section(name: str, runs: list[dict], png: Path) -> str:
    by_col = {column_of(r): r for r in runs if column_of(r)}
    if not by_col:
        return ""
    any_run = next(iter(by_col.values()))
    Ts = sorted({int(t) for r in by_col.values() for t in r["snn"]["acc"]}, key=int)
    cols = [h for h, _, _ in COLUMNS if h in by_col]
    headers = ["T", "ANN"] + [f"{h} (latency / pipelined)" if "pipelined_latency_steps" in by_col[h] else h for h in cols]
    rows = []
    for t in Ts:
        row = [t, any_run["ann"]["acc"]]
        for h in cols:
            r = by_col[h]
            acc = r["snn"]["acc"].get(str(t))
            lat, pipe = r["latency_steps"].get(str(t)), r.get("pipelined_latency_steps", {}).get(str(t))
            row.append(f"{acc:.2f} ({lat} / {pipe})" if pipe is not None and acc is not None else acc)
        rows.append(row)
    cfg = any_run["config"]
    lines = [
        f"### {name}",
        "",
        f"{cfg['arch']['name']} (width {cfg['arch']['width']}), ANN source {cfg['ann']['name']}"
        + (f" L={cfg['ann']['L']}" if cfg["ann"]["name"] == "qcfs" else f" percentile {cfg['ann']['percentile']}")
        + f", {cfg['train']['epochs']} epochs; {any_run['images']} test images; "
        f"{any_run['snn']['spiking_layers']} spiking layers. Accuracy in %; (latency) = steps each layer "
        "integrates, rho*passes + T for COS; pipelined = N*rho*passes + T for a layer-pipelined deployment.",
        "",
        markdown(headers, rows),
        "",
    ]
    if any(r.get("stats") for r in by_col.values()):
        lines += ["Cost per T (`snnconv.stats`, per test image): SOPs = synaptic operations on the binary spikes "
                  "(exact fan-out, COS pre-simulation included), fr = spikes per neuron per step over the T counted "
                  "steps, E/E_ANN = compute energy ratio to the ANN.", "",
                  comparison_markdown([by_col[h] for h in cols], labels=cols), ""]
    cos = [(h, by_col[h]["offset_spike"]) for h in ("COS x1", "COS x2", "FTBC+COS") if h in by_col and by_col[h].get("offset_spike")]
    if cos:
        lines += ["Offset spike psi on the rho window, all neurons (Table 3 of the COS paper): share with psi = 0 "
                  "and mean psi^2, before calibration and after each pass.", ""]
        prow = []
        for h, d in cos:
            total = d.get("total", {})
            prow.append([h, " / ".join(f"{v:.3f}" for v in total.get("psi_zero_share", [])),
                         " / ".join(f"{v:.4f}" for v in total.get("psi_mse", [])),
                         " / ".join(f"{v:.2f}" for v in total.get("saturated_unshifted_share", []))])
        lines += [markdown(["run", "psi=0 share % (before / after pass k)", "mean psi^2", "saturated, left unshifted %"], prow), ""]
    timing = [[h, by_col[h]["timing_s"].get("calibrate"), by_col[h]["timing_s"].get("evaluate")] for h in cols]
    lines += ["Wall time (s) per run: calibration (thresholds, conversion, method) and evaluation.", "",
              markdown(["run", "calibrate s", "evaluate s"], timing), ""]
    series = {h: {int(t): v for t, v in by_col[h]["snn"]["acc"].items()} for h in cols}
    plot(series, png, title=name, ann=any_run["ann"]["acc"])
    lines += [f"![{name}]({png.name})", ""]
    return "\n".join(lines)


def load_paper_results(conf_dir: Path) -> dict:
    """{preset: {method: {"ann", "acc": {T: %}, "source"}}} from docs/paper_results/*.yaml."""
    import yaml

    merged: dict = {}
    for f in sorted(conf_dir.glob("*.yaml")):
        for preset, methods in (yaml.safe_load(f.read_text()) or {}).items():
            if preset == "psi":
                continue
            for method, rec in methods.items():
                merged.setdefault(preset, {})[method] = {**rec, "source": f.stem}
    return merged


def paper_section(runs: list[dict], paper: dict) -> str:
    """Our number, the paper's and the difference per T, for runs of a preset with published numbers."""
    parts = []
    for r in runs:
        preset = str(r["config"].get("task_name", "")).rsplit("-", 1)[0]
        ref = paper.get(preset, {}).get(r["method"])
        if not ref:
            continue
        Ts = sorted({int(t) for t in r["snn"]["acc"]} | {int(t) for t in ref["acc"]})
        rows = [["ANN", r["ann"]["acc"], ref["ann"], r["ann"]["acc"] - ref["ann"]]]
        for t in Ts:
            ours, theirs = r["snn"]["acc"].get(str(t)), ref["acc"].get(t)
            rows.append([f"T={t}", ours, theirs, None if ours is None or theirs is None else ours - theirs])
        parts += [f"### {preset}, {r['method']} (paper: {ref['source']})", "",
                  markdown(["", "ours", "paper", "ours - paper"], rows), ""]
    return "\n".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/results.md"))
    p.add_argument("--wall-time", type=float, default=None, help="seconds the whole reproduction took")
    p.add_argument("--command", default="make reproduce-cpu", help="the command that produced the tree")
    args = p.parse_args()
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory; run `make reproduce-cpu` first", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wall = f"{args.wall_time / 60:.1f} min" if args.wall_time else "not measured"
    all_runs = load_runs(args.root)
    images = ", ".join(f"{n:,}" for n in sorted({r["images"] for r in all_runs if "images" in r})) or "?"
    run_time = sum(sum(v for v in r.get("timing_s", {}).values()) for r in all_runs) / 60
    parts = [
        "# Measured results (CPU-scale reproduction)",
        "",
        f"Generated by `{args.command}` (scripts/make_tables.py); do not edit by hand.",
        "",
        f"- date: {datetime.date.today().isoformat()}; wall time of this invocation: {wall} (finished sweeps are "
        f"reused); train + calibrate + evaluate time summed over the {len(all_runs)} runs: {run_time:.1f} min",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; python "
        f"{platform.python_version()}, torch {torch.__version__}",
        f"- data: Fashion-MNIST (Debian `dataset-fashion-mnist`), the first {images} of its 10,000 test images; "
        "calibration batches from the training split only",
        "",
        "## Method comparison per network",
        "",
    ]
    for exp in sorted(d for d in args.root.iterdir() if d.is_dir() and d.name != "alpha_sweep"):
        section = experiment_section(exp.name, load_runs(exp), args.out.parent / f"results_{exp.name}.png")
        if section:
            parts.append(section)
    sweep = args.root / "alpha_sweep"
    if sweep.is_dir() and load_runs(sweep):
        sweep_runs = load_runs(sweep)
        n_images = sorted({r["images"] for r in sweep_runs})
        recipes = sorted({f"{m['iterations']} iteration(s) over {m['batches']} x {m['batch_size']} training images"
                          for m in (r["config"]["method"] for r in sweep_runs)})
        parts += ["## FTBC step size alpha (VGG16 w/4, QCFS L=4)", "",
                  f"Test images per run: {', '.join(map(str, n_images))}; {'; '.join(recipes)}.", "",
                  pivot_markdown(sweep_runs, ["method.alpha"]), ""]
    paper = paper_section(all_runs, load_paper_results(Path(__file__).resolve().parents[1] / "docs" / "paper_results"))
    if paper:
        parts += ["## Against the published numbers", "", paper]
    for bench in ("bench_simulation", "bench_calibration"):
        f = args.root / f"{bench}.txt"
        if f.is_file():
            parts += [f"## scripts/{bench}.py", "", "```", f.read_text().strip(), "```", ""]
    args.out.write_text("\n".join(parts) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
