"""Read finished runs (every `results.json` under a directory, e.g. a Hydra multirun) and turn them into tables.

A run is labelled by the config values that differ between the runs found (the swept keys), e.g.
`method.alpha=0.3`; `pivot` gives {label: {T: acc}}, `markdown` and `plot` render it; `comparison_markdown`
gives one row per run and T with accuracy, latency and, for runs with `stats=true`, SOPs per image, network
firing rate and energy ratio to the ANN. Used by scripts/collect.py (one multirun -> tables + PNG; `make demo`)
and scripts/make_tables.py (docs/results.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from snnconv.report import energy_line, format_value, plot_accuracy, stats_per_t
from snnconv.utils import atomic_write

# Config keys that never label a run (they differ between runs without changing what was measured).
_IGNORED_PREFIXES = ("output_dir", "task_name", "logger.", "data.root", "device", "extra")


def load_runs(root: str | Path) -> list[dict]:
    """Every results.json below `root` (sorted by path), each with its directory under key `_dir`."""
    runs = []
    for path in sorted(Path(root).rglob("results.json")):
        result = json.loads(path.read_text())
        result["_dir"] = str(path.parent)
        runs.append(result)
    return runs


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(obj) if isinstance(obj, list) else obj}


def swept_keys(runs: Iterable[Mapping]) -> list[str]:
    """Config keys (dotted) whose value differs between runs, without those that follow from another: with
    `method=baseline,ftbc` only `method.name`, not FTBC's `method.alpha` that differs along with it. Keys are
    taken in order, `*.name` first, and one is kept only if it splits a group of runs that the kept ones do not."""
    flats = [_flatten(r.get("config") or {}) for r in runs]
    keys = sorted({k for f in flats for k in f}, key=lambda k: (not k.endswith(".name"), k))
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1 and not k.startswith(_IGNORED_PREFIXES)]
    kept: list[str] = []
    groups = 1
    for k in varying:
        split = len({tuple(json.dumps(f.get(j)) for j in [*kept, k]) for f in flats})
        if split > groups:
            kept.append(k)
            groups = split
    return sorted(kept)


def label(run: Mapping, keys: list[str], short: bool = False) -> str:
    """`k=v, ...` over `keys` (just the value with short=True and one key); the method name without keys."""
    flat = _flatten(run.get("config") or {})
    if short and len(keys) == 1:
        return str(flat.get(keys[0]))
    return ", ".join(f"{k}={flat.get(k)}" for k in keys) or str(run.get("method"))


def pivot(runs: list[Mapping], keys: list[str] | None = None) -> tuple[list[str], list[int], dict]:
    """(row labels, sorted T values, {label: {T: acc}}) over `runs`, rows labelled by `keys` (default: swept)."""
    keys = swept_keys(runs) if keys is None else keys
    table: dict[str, dict[int, float]] = {}
    for r in runs:
        table[label(r, keys)] = {int(t): v for t, v in r["snn"]["acc"].items()}
    Ts = sorted({t for row in table.values() for t in row})
    return list(table), Ts, table


# (header, key, cell format) of the comparison table; key: acc | latency | pipelined | a report.STATS_COLUMNS key
COMPARE_COLUMNS = [
    ("acc %", "acc", ".2f"),
    ("latency", "latency", "d"),
    ("pipelined", "pipelined", "d"),
    ("SOPs/img", "sops_per_image", "si"),
    ("fr %", "firing_rate", "%"),
    ("E/E_ANN", "energy_ratio", ".3f"),
]


def per_t(run: Mapping, key: str) -> dict[int, Any]:
    """{T: value} of one comparison column for one run ({} when the run does not have it)."""
    if key == "acc":
        values = run["snn"]["acc"]
    elif key == "latency":
        values = run.get("latency_steps") or {}
    elif key == "pipelined":
        values = run.get("pipelined_latency_steps") or {}
    else:
        values = {t: v[key] for t, v in stats_per_t(run).items()}
    return {int(t): v for t, v in values.items() if v is not None}


def comparison_markdown(runs: list[Mapping], keys: list[str] | None = None, labels: list[str] | None = None) -> str:
    """One row per run and T: accuracy, latency, [pipelined latency], and with stats SOPs per image, firing rate
    (%) and energy ratio to the ANN; the ANN accuracy and the energy convention under the table. Rows are
    labelled by `labels` (one per run) or by the values of `keys` (default: the swept keys)."""
    keys = swept_keys(runs) if keys is None else keys
    labels = labels or [label(r, keys, short=True) for r in runs]
    cols = [c for c in COMPARE_COLUMNS if any(per_t(r, c[1]) for r in runs)]
    rows = []
    for name, r in zip(labels, runs):
        values = {key: per_t(r, key) for _, key, _ in cols}
        for t in sorted(values["acc"]):
            rows.append([name, t] + [format_value(values[key].get(t), spec) for _, key, spec in cols])
    text = markdown(["run", "T", *[h for h, _, _ in cols]], rows)
    anns = sorted({r["ann"]["acc"] for r in runs})
    if anns:
        text += f"\n\nANN accuracy: {', '.join(f'{a:.2f}' for a in anns)} %"
    line = next((energy_line(r) for r in runs if energy_line(r)), None)
    return text + (f"\n{line}" if line else "")


def _cell(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats with two decimals."""
    fmt = [[_cell(c) if isinstance(c, float) else ("-" if c is None else str(c)) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in fmt])


def _latency_cell(run: Mapping, t: int) -> str:
    """Accuracy at T, with the latency in steps when it differs from T (COS at T=1 with rho=4 is 5 steps) and the
    pipelined latency when the method reports one: '90.84 (5 / 77)'."""
    acc = run["snn"]["acc"].get(str(t))
    if acc is None:
        return "-"
    latency = (run.get("latency_steps") or {}).get(str(t))
    pipelined = (run.get("pipelined_latency_steps") or {}).get(str(t))
    if pipelined is not None:
        return f"{acc:.2f} ({latency} / {pipelined})"
    return f"{acc:.2f}" + (f" ({latency})" if latency is not None and int(latency) != t else "")


def pivot_markdown(runs: list[Mapping], keys: list[str] | None = None) -> str:
    """Rows = runs labelled by `keys`, columns = T, cells = accuracy (latency when it is not T), then the number
    of test images each run evaluated; the ANN accuracies below."""
    keys = swept_keys(runs) if keys is None else keys
    labels, Ts, _ = pivot(runs, keys)
    by_label = {label(r, keys): r for r in runs}
    anns = {r["ann"]["acc"] for r in runs}
    rows = [[lab, *[_latency_cell(by_label[lab], t) for t in Ts], by_label[lab].get("images")] for lab in labels]
    head = ["run"] + [f"T={t}" for t in Ts] + ["test images"]
    note = f"\n\nANN accuracy: {', '.join(f'{a:.2f}' for a in sorted(anns))} %" if anns else ""
    if any(c.endswith(")") for row in rows for c in row[1:-1] if isinstance(c, str)):
        note += "\n\nIn brackets: latency in time steps where it is not T (/ pipelined over all layers)."
    return markdown(head, rows) + note


def failed_jobs(root: str | Path) -> list[dict]:
    """Job folders below `root` without a results.json: {"dir", "error"} from their status.json (written by
    snnconv.jobs), or error None for a job that left no status (killed, or still running). A job folder is one
    holding Hydra's `.hydra/` or a status.json."""
    out = []
    root = Path(root)
    folders = {p.parent for p in root.rglob(".hydra")} | {p.parent for p in root.rglob("status.json")}
    for folder in sorted(folders):
        if (folder / "results.json").is_file():
            continue
        error = None
        try:
            error = json.loads((folder / "status.json").read_text()).get("error")
        except (OSError, ValueError):
            pass
        out.append({"dir": str(folder), "error": error})
    return out


def plot(series: Mapping[str, Mapping[int, float]], path: str | Path, title: str, ann: float | None = None) -> None:
    """One accuracy-vs-T line per series (log2 T axis), optional ANN line; written as PNG (`report.plot_accuracy`)."""
    atomic_write(path, plot_accuracy(series, title, ann=ann))
