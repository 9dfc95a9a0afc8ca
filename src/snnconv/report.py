"""Report a run's ``results`` dict: terminal table, local files, and (optionally) Weights & Biases.

Ordering contract for callers: open a :class:`WandbRun` before training (training curves arrive live), call
:func:`write_local` FIRST at the end, then ``WandbRun.finish(results)`` (``finish(exit_code=1)`` when the run
fails). The local files (``results.json``, ``results.csv``, ``accuracy_vs_T.png``) are the authoritative record;
W&B is a mirror and never raises, so a W&B failure cannot lose or hide them.

``results`` keys (see ``runner``): ``ann.acc``, ``snn.acc`` / ``snn.agreement`` (``{str(T): percent}``),
``latency_steps``, optional ``pipelined_latency_steps``, ``timing_s``, ``method``, ``images`` (test images
evaluated), ``test_images_available``, ``config``, ``config_hash``, and the
method's result sections (e.g. ``offset_spike``, ``ftbc``), whose keys are listed in ``sections`` (every numeric
leaf of a listed section reaches the W&B summary; no list of names here).
With ``stats=true`` a ``stats`` section (``snnconv.stats``): its per-T totals become table / CSV / W&B columns
(SOPs per image, network firing rate, energy ratio to the ANN), and two more plots are written:
``firing_rate_per_layer.png`` and ``accuracy_vs_sops.png``.
With a ``finetune`` section (``snnconv.finetune``; ``before`` / ``after``: ``{str(T): percent}``) the accuracy
before fine-tuning is a table column, a CSV column, a second line in the accuracy plot and a W&B per-T metric.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from snnconv.utils import atomic_write

CSV_COLUMNS = ("T", "latency_steps", "pipelined_latency_steps", "snn_acc", "agreement", "ann_acc", "method",
               "sops_per_image", "firing_rate", "energy_ratio", "snn_acc_before_finetune", "test_images",
               "test_images_available")
STATS_COLUMNS = ("sops_per_image", "firing_rate", "energy_ratio")


def _by_t(mapping: Mapping | None) -> dict[str, Any]:
    return {str(k): v for k, v in (mapping or {}).items()}


def stats_per_t(results: Mapping) -> dict[str, dict[str, Any]]:
    """{T: {sops_per_image, firing_rate, energy_ratio}} from the ``stats`` section ({} without one)."""
    stats = results.get("stats") or {}
    sops, rate = _by_t(stats.get("total_sops")), _by_t(stats.get("firing_rate"))
    energy = _by_t(stats.get("energy_pj"))
    return {
        t: {"sops_per_image": sops.get(t), "firing_rate": rate.get(t), "energy_ratio": (energy.get(t) or {}).get("ratio")}
        for t in sops
    }


def _rows(results: Mapping) -> list[dict[str, Any]]:
    """One dict per T (ascending): T, latency_steps, pipelined_latency_steps, snn_acc, agreement, the
    STATS_COLUMNS and snn_acc_before_finetune (None if absent)."""
    snn = results.get("snn") or {}
    acc = _by_t(snn.get("acc"))
    agreement = _by_t(snn.get("agreement"))
    latency = _by_t(results.get("latency_steps"))
    pipelined = _by_t(results.get("pipelined_latency_steps"))
    stats = stats_per_t(results)
    before = _by_t((results.get("finetune") or {}).get("before"))
    return [
        {
            "T": int(t),
            "latency_steps": latency.get(t),
            "pipelined_latency_steps": pipelined.get(t),
            "snn_acc": acc[t],
            "agreement": agreement.get(t),
            **{k: (stats.get(t) or {}).get(k) for k in STATS_COLUMNS},
            "snn_acc_before_finetune": before.get(t),
        }
        for t in sorted(acc, key=int)
    ]


def _ann_acc(results: Mapping) -> float | None:
    return (results.get("ann") or {}).get("acc")


def format_value(value: Any, spec: str = ".2f") -> str:
    """A table cell: "-" for None; spec "si" = 3 significant digits with k / M / G; "%" = a share in percent."""
    if value is None:
        return "-"
    if spec == "si":  # 3 significant digits with a k / M / G suffix: a compact SOP count
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= div:
                return f"{value / div:.3g}{suffix}"
        return f"{value:.3g}"
    if spec == "%":
        return format(100.0 * value, ".2f")
    return format(value, spec)


_fmt = format_value


def energy_line(results: Mapping) -> str | None:
    """The line printed under any energy number: preset, per-op costs, and the compute-only caveat."""
    stats = results.get("stats") or {}
    cost = stats.get("cost")
    if not cost:
        return None
    return (
        f"E/E_ANN: {cost['preset']} (E_MAC {cost['e_mac']} pJ, E_AC {cost['e_ac']} pJ); SOPs per image incl. "
        "COS pre-simulation, first layer's MACs once per image; compute-only, no memory traffic"
    )


def images_note(results: Mapping) -> str | None:
    """'360 test images', or '16 of 360 test images' when only part of the test split was evaluated (what every
    report states, so a one-batch evaluation cannot pass for a full one); None when the count is unknown."""
    n, available = results.get("images"), results.get("test_images_available")
    if n is None:
        return None
    if available is not None and int(available) != int(n):
        return f"{int(n):,} of {int(available):,} test images"
    return f"{int(n):,} test images"


def format_table(results: Mapping) -> str:
    """Fixed-width per-T table (T | latency | [pipelined] | SNN acc % | [agreement %]) plus an ANN line."""
    rows = _rows(results)
    cols: list[tuple[str, str, str]] = [("T", "T", "d"), ("latency", "latency_steps", "d")]
    if results.get("pipelined_latency_steps"):
        cols.append(("pipelined", "pipelined_latency_steps", "d"))
    if any(r["snn_acc_before_finetune"] is not None for r in rows):
        cols.append(("before FT %", "snn_acc_before_finetune", ".2f"))
    cols.append(("SNN acc %", "snn_acc", ".2f"))
    if any(r["agreement"] is not None for r in rows):
        cols.append(("agreement %", "agreement", ".2f"))
    if any(r["sops_per_image"] is not None for r in rows):
        cols += [("SOPs/img", "sops_per_image", "si"), ("fr %", "firing_rate", "%"), ("E/E_ANN", "energy_ratio", ".3f")]
    cells = [[_fmt(r[key], spec) for _, key, spec in cols] for r in rows]
    widths = [max([len(head)] + [len(c[i]) for c in cells]) for i, (head, _, _) in enumerate(cols)]
    lines = [" | ".join(head.rjust(w) for (head, _, _), w in zip(cols, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    notes = [f"method: {results['method']}"] if results.get("method") else []
    notes += [images_note(results)] if images_note(results) else []
    lines.append(f"ANN acc %: {_fmt(_ann_acc(results))}" + (f"   ({', '.join(notes)})" if notes else ""))
    if energy_line(results):
        lines.append(energy_line(results))
    ft = results.get("finetune")
    if isinstance(ft, Mapping):
        sparsity = (ft.get("backward_sparsity") or {}).get("total")
        lines.append(
            f"fine-tuned: {ft.get('name')} at T={ft.get('T')}, {ft.get('epochs')} epochs, "
            f"{_fmt(ft.get('seconds_per_epoch'), '.1f')} s/epoch = {_fmt(ft.get('ratio_to_ann_epoch'), '.1f')} x an ANN "
            f"epoch, backward sparsity {_fmt(None if sparsity is None else 100 * sparsity, '.1f')} %"
            + (f" (loaded from cache {Path(ft['path']).name})" if ft.get("source") == "cache" and ft.get("path") else "")
        )
    return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _title(results: Mapping) -> str:
    cfg = results.get("config") or {}

    def name(section: str) -> Any:
        node = cfg.get(section)
        return node.get("name") if isinstance(node, Mapping) else node

    parts = [results.get("method") or name("method"), name("arch"), name("data")]
    ft = results.get("finetune")
    if isinstance(ft, Mapping):
        parts[0] = f"{parts[0]} + {ft.get('name')} (T={ft.get('T')})"
    return " | ".join(str(p) for p in parts if p) or "SNN accuracy"


def plot_accuracy(
    series: Mapping[str, Mapping[int, float]],
    title: str,
    ann: float | None = None,
    annotate: bool = False,
    latency_labels: Mapping[int, str] | None = None,
    latency_title: str = "latency (steps)",
) -> bytes:
    """The one accuracy-vs-T plotter (PNG bytes): a line per series {label: {T: accuracy %}} on a log2 T axis,
    the ANN's accuracy as a dashed line, values annotated when `annotate`, and a top axis with the latency of
    each T when `latency_labels` is given (methods whose latency is not T)."""
    from matplotlib.ticker import NullLocator

    fig, ax = _figure()
    ts_all = sorted({int(t) for points in series.values() for t in points})
    values = []
    for name, points in series.items():
        ts = sorted(points)
        accs = [points[t] for t in ts]
        values += accs
        ax.plot(ts, accs, marker="o", label=name)
        if annotate:
            for t, a in zip(ts, accs):
                ax.annotate(f"{a:.1f}", (t, a), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if ann is not None:
        ax.axhline(ann, linestyle="--", color="gray", label=f"ANN {ann:.2f}%")
    ax.set_xscale("log", base=2)
    if len(ts_all) == 1:
        ax.set_xlim(ts_all[0] / 2, ts_all[0] * 2)
    ax.set_xticks(ts_all, [str(t) for t in ts_all])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("T (time steps)")
    ax.set_ylabel("test accuracy (%)")
    top = max([100.0] + [a for a in values if a is not None and math.isfinite(a)])
    ax.set_ylim(0, top + 2)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if latency_labels:
        sec = ax.secondary_xaxis("top")
        sec.set_xticks(ts_all, [latency_labels.get(t, "") for t in ts_all], fontsize=8)
        sec.xaxis.set_minor_locator(NullLocator())
        sec.set_xlabel(latency_title)
    ax.set_title(title)
    return _png(fig)


def _figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas without touching pyplot's global backend
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _firing_rate_png(results: Mapping) -> bytes:
    """Firing rate (spikes per neuron per step) of every spiking layer, one line per T."""
    layers = results["stats"]["per_layer"]
    Ts = sorted({t for rec in layers for t in rec["firing_rate"]}, key=int)
    fig, ax = _figure(max(6.4, 0.35 * len(layers) + 2), 4.6)
    xs = list(range(len(layers)))
    for t in Ts:
        ax.plot(xs, [rec["firing_rate"].get(t) for rec in layers], marker="o", markersize=3, label=f"T={t}")
    ax.set_xticks(xs, [rec["name"] for rec in layers], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("firing rate (spikes / neuron / step)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"firing rate per layer ({_title(results)})")
    return _png(fig)


def _acc_vs_sops_png(results: Mapping) -> bytes:
    """Accuracy against SOPs per image, one point per T; the ANN's accuracy and the SOP count at which the
    SNN's compute energy equals the ANN's (E_MAC * (MAC_ANN - MAC_first) / E_AC) as reference lines."""
    rows = [r for r in _rows(results) if r["sops_per_image"] is not None]
    stats = results["stats"]
    fig, ax = _figure()
    xs, ys = [r["sops_per_image"] for r in rows], [r["snn_acc"] for r in rows]
    ax.plot(xs, ys, marker="o", label="SNN")
    for r in rows:
        ax.annotate(f"T={r['T']}", (r["sops_per_image"], r["snn_acc"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ann = _ann_acc(results)
    if ann is not None:
        ax.axhline(ann, linestyle="--", color="gray", label=f"ANN {ann:.2f}%")
    cost = stats.get("cost") or {}
    if cost.get("e_ac") and stats.get("mac_ann"):
        even = cost["e_mac"] * (stats["mac_ann"] - stats.get("mac_first", 0)) / cost["e_ac"]
        ax.axvline(even, linestyle=":", color="tab:red", label=f"E_SNN = E_ANN ({cost['preset']})")
    if all(x and x > 0 for x in xs):
        ax.set_xscale("log")
    ax.set_xlabel("SOPs per image (incl. COS pre-simulation)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, max([100.0] + [y for y in ys if y is not None and math.isfinite(y)]) + 2)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(_title(results))
    return _png(fig)


def _plot_png(results: Mapping) -> bytes:
    rows = _rows(results)
    pipelined = any(r["pipelined_latency_steps"] is not None for r in rows)
    labels = None
    if pipelined or any(r["latency_steps"] not in (None, r["T"]) for r in rows):
        labels = {
            r["T"]: _fmt(r["latency_steps"], "d") + (f"/{_fmt(r['pipelined_latency_steps'], 'd')}" if pipelined else "")
            for r in rows
        }
    series = {"SNN": {r["T"]: r["snn_acc"] for r in rows}}
    if any(r["snn_acc_before_finetune"] is not None for r in rows):
        series = {
            "SNN before fine-tuning": {r["T"]: r["snn_acc_before_finetune"] for r in rows},
            "SNN after fine-tuning": series["SNN"],
        }
    return plot_accuracy(
        series,
        _title(results) + (f"\n{images_note(results)}" if images_note(results) else ""),
        ann=_ann_acc(results),
        annotate=True,
        latency_labels=labels,
        latency_title="latency (steps)" + (" / pipelined" if pipelined else ""),
    )


def write_local(out_dir: str | os.PathLike, results: Mapping) -> dict[str, Path]:
    """Write ``results.csv``, ``accuracy_vs_T.png``, with a ``stats`` section ``firing_rate_per_layer.png`` and
    ``accuracy_vs_sops.png``, and, last, ``results.json`` into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "png": out / "accuracy_vs_T.png"}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    ann, method = _ann_acc(results), results.get("method")
    for row in _rows(results):
        row = {**row, "ann_acc": ann, "method": method, "test_images": results.get("images"),
               "test_images_available": results.get("test_images_available")}
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    atomic_write(paths["csv"], buf.getvalue().encode())

    atomic_write(paths["png"], _plot_png(results))
    if (results.get("stats") or {}).get("per_layer"):
        paths["firing_rate_png"] = out / "firing_rate_per_layer.png"
        paths["sops_png"] = out / "accuracy_vs_sops.png"
        atomic_write(paths["firing_rate_png"], _firing_rate_png(results))
        atomic_write(paths["sops_png"], _acc_vs_sops_png(results))
    text = json.dumps(results, indent=2, default=_json_default) + "\n"
    atomic_write(paths["json"], text.encode())  # last: its presence means the run's files are complete
    return paths


# Config keys that do not change what a run measures: where files are, how they are logged, how time is folded.
_HASH_IGNORED = ("output_dir", "task_name", "logger", "checkpoint_dir", "data.root", "data.download",
                 "data.num_workers", "train.cache", "snn.time_chunk")


def config_hash(config: Mapping) -> str:
    """Hex digest (16 chars) of a run's resolved config (a plain dict, as in results.json) without the keys in
    `_HASH_IGNORED`; stored in results.json as `config_hash`, compared to skip a job already finished."""
    data = json.loads(json.dumps(config, default=str))
    for dotted in _HASH_IGNORED:
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def finished_results(digest: str, folders: Iterable[Path]) -> Path | None:
    """The first `results.json` in `folders` whose `config_hash` equals `digest`, else None. `write_local`
    writes results.json last, so its presence means the csv and png are complete too."""
    for folder in folders:
        path = Path(folder) / "results.json"
        try:
            if json.loads(path.read_text()).get("config_hash") == digest:
                return path
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _flatten_numeric(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    """Collect numeric (and bool) leaves of nested mappings as ``prefix/a/b`` keys; skip everything else."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten_numeric(f"{prefix}/{k}", v, out)
    elif isinstance(obj, (bool, int, float)):
        out[prefix] = obj
    elif hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        try:
            value = obj.item()
        except Exception:
            return
        if isinstance(value, (bool, int, float)):
            out[prefix] = value


def _summary(results: Mapping) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if _ann_acc(results) is not None:
        summary["ann/acc"] = _ann_acc(results)
    for r in _rows(results):
        t = r["T"]
        summary[f"snn/acc_T{t}"] = r["snn_acc"]
        for key in ("agreement", "latency_steps", "pipelined_latency_steps", *STATS_COLUMNS, "snn_acc_before_finetune"):
            if r[key] is not None:
                summary[f"snn/{key}_T{t}"] = r[key]
    _flatten_numeric("timing_s", results.get("timing_s") or {}, summary)
    for key in results.get("sections") or ():
        if isinstance(results.get(key), Mapping):
            _flatten_numeric(key, results[key], summary)
    if results.get("method"):
        summary["method"] = results["method"]
    return summary


def _log_run(run: Any, wandb: Any, results: Mapping, out: Path | None = None) -> None:
    run.define_metric("T")
    run.define_metric("snn/*", step_metric="T")
    rows = _rows(results)
    for r in rows:
        record = {"T": r["T"], "snn/acc": r["snn_acc"]}
        for key in ("latency_steps", "pipelined_latency_steps", "agreement", *STATS_COLUMNS, "snn_acc_before_finetune"):
            if r[key] is not None:
                record[f"snn/{key}"] = r[key]
        run.log(record)
    _log_stats(run, wandb, results, out)
    table = wandb.Table(
        columns=["T", "latency_steps", "snn_acc"],
        data=[[r["T"], r["latency_steps"], r["snn_acc"]] for r in rows],
    )
    title = f"SNN accuracy vs T ({_title(results)})"
    run.log({"snn_acc_vs_T": wandb.plot.line(table, "T", "snn_acc", title=title)})
    for key, value in _summary(results).items():
        run.summary[key] = value


def _log_stats(run: Any, wandb: Any, results: Mapping, out: Path | None) -> None:
    """Per-layer charts (firing rate and SOPs per image at the largest T, bar charts over layers), a per-layer x
    per-T table, and the two stats plots as images."""
    stats = results.get("stats") or {}
    layers = stats.get("per_layer") or []
    if not layers:
        return
    Ts = sorted({t for rec in layers for t in rec["firing_rate"]}, key=int)
    rows = [[i, rec["name"], int(t), rec["neurons"], rec["firing_rate"][t], rec["spikes"][t], rec["sops"][t]]
            for t in Ts for i, rec in enumerate(layers)]
    cols = ["layer_index", "layer", "T", "neurons", "firing_rate", "spikes_per_image", "sops_per_image"]
    run.log({"stats/per_layer": wandb.Table(columns=cols, data=rows)})
    t_max = Ts[-1]
    last = wandb.Table(columns=["layer", "firing_rate", "sops_per_image"],
                       data=[[rec["name"], rec["firing_rate"][t_max], rec["sops"][t_max]] for rec in layers])
    run.log({
        "stats/firing_rate_per_layer": wandb.plot.bar(last, "layer", "firing_rate", title=f"firing rate per layer, T={t_max}"),
        "stats/sops_per_layer": wandb.plot.bar(last, "layer", "sops_per_image", title=f"SOPs per image per layer, T={t_max}"),
    })
    table = wandb.Table(columns=["T", "sops_per_image", "snn_acc"],
                        data=[[r["T"], r["sops_per_image"], r["snn_acc"]] for r in _rows(results)])
    run.log({"stats/acc_vs_sops": wandb.plot.scatter(table, "sops_per_image", "snn_acc", title="accuracy vs SOPs per image")})
    for key, name in (("stats/firing_rate_png", "firing_rate_per_layer.png"), ("stats/acc_vs_sops_png", "accuracy_vs_sops.png")):
        if out is not None and (out / name).is_file():  # written by write_local, which runs first
            run.log({key: wandb.Image(str(out / name))})


def _reinit_kwargs(wandb: Any) -> dict[str, Any]:
    """Let several runs live in one process (wandb >= 0.19.10: ``reinit="create_new"``; older: ``True``)."""
    try:
        return {"settings": wandb.Settings(reinit="create_new")}
    except Exception:
        return {"reinit": True}


class WandbRun:
    """A W&B run opened before training, so training curves arrive while it trains, and closed with the results
    (exit code 0) or as failed (exit code 1) when the run fails. Inert when ``logger_cfg.name != "wandb"``; no
    method raises: a W&B failure prints one warning line and the run goes on (the local files are the record).

    ``config``: the resolved run config (plain dict). ``offline_dir``: the ``wandb/offline-run-*`` folder in
    offline mode, once finished.
    """

    def __init__(self, logger_cfg: Any, config: Mapping | None, run_name: str, out_dir: str | os.PathLike):
        self.run: Any = None
        self.wandb: Any = None
        self.out = Path(out_dir)
        self.offline_dir: Path | None = None
        self.mode = getattr(logger_cfg, "mode", "offline")
        if getattr(logger_cfg, "name", "none") != "wandb":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        if self.mode == "offline":
            # wandb 0.31's wandb.init builds its telemetry proxy from the GLOBAL settings (online unless
            # WANDB_MODE says otherwise), which probes the server at exit even for an offline run.
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        try:
            import wandb

            self.out.mkdir(parents=True, exist_ok=True)
            tags = getattr(logger_cfg, "tags", None)
            self.run = wandb.init(
                project=getattr(logger_cfg, "project", None),
                entity=getattr(logger_cfg, "entity", None),
                group=getattr(logger_cfg, "group", None),
                tags=[str(t) for t in tags] if tags else None,
                name=run_name,
                mode=self.mode,
                dir=str(self.out),
                config=dict(config or {}),
                **_reinit_kwargs(wandb),
            )
            self.wandb = wandb
            self.run.define_metric("train/step")
            self.run.define_metric("train/*", step_metric="train/step")
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"W&B logging failed ({detail}); local results are in {self.out}", file=sys.stderr)
        if self.run is not None:
            with contextlib.suppress(Exception):
                self.run.finish(exit_code=1)
        self.run = None

    def log(self, metrics: Mapping[str, Any]) -> None:
        """Log one record now (e.g. ``{"train/step": 20, "train/loss": 1.2}``)."""
        if self.run is None:
            return
        try:
            self.run.log(dict(metrics))
        except Exception as exc:
            self._fail(exc)

    def finish(self, results: Mapping | None = None, exit_code: int = 0) -> Path | None:
        """Log ``results`` (per-T metrics against a ``T`` step metric, a ``snn_acc_vs_T`` line plot, summary
        keys) and close the run with ``exit_code`` (non-zero: W&B marks it failed). Returns ``offline_dir``."""
        if self.run is None:
            return None
        run, self.run = self.run, None
        try:
            if results is not None:
                _log_run(run, self.wandb, results, self.out)
            if self.mode == "offline":
                self.offline_dir = Path(run.dir).parent  # run.dir is <dir>/wandb/offline-run-*/files
        except Exception as exc:
            exit_code = exit_code or 1
            self.run = run
            self._fail(exc)
            return None
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:
            self._fail(exc)
            return None
        return self.offline_dir if self.mode != "disabled" else None


def log_wandb(logger_cfg: Any, results: Mapping, run_name: str, out_dir: str | os.PathLike) -> Path | None:
    """Mirror a finished run's ``results`` to W&B when ``logger_cfg.name == "wandb"`` (a `WandbRun` opened and
    finished at once); never raises. Returns the ``wandb/offline-run-*`` folder in offline mode, else None (also
    on failure, after a one-line warning on stderr)."""
    return WandbRun(logger_cfg, results.get("config"), run_name, out_dir).finish(results)
