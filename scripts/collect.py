"""One multirun directory -> tables (accuracy: swept values x T; comparison: run x T with accuracy, latency, SOPs
per image, firing rate, energy ratio) and one PNG plot.

    python scripts/collect.py multirun/2026-11-23_14-00-00 [--keys method.alpha] [--out DIR] [--compare-only]

Prints the markdown tables and the jobs that failed or left no results, and writes <out>/collect.md and
<out>/collect.png (out defaults to DIR).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from snnconv.collect import (
    comparison_markdown,
    failed_jobs,
    load_runs,
    pivot,
    pivot_markdown,
    plot,
    swept_keys,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--keys", default="", help="comma-separated config keys labelling rows (default: the swept ones)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compare-only", action="store_true", help="print only the comparison table (make demo)")
    args = p.parse_args()
    runs = load_runs(args.dir)
    failed = failed_jobs(args.dir)
    if not runs:
        print(f"error: no results.json under {args.dir} ({len(failed)} job folder(s) without results); pass a run "
              f"or multirun directory", file=sys.stderr)
        return 2
    keys = [k for k in args.keys.split(",") if k] or swept_keys(runs)
    compare = comparison_markdown(runs, keys)
    text = compare if args.compare_only else pivot_markdown(runs, keys) + "\n\n" + compare
    if failed:
        text += f"\n\n{len(failed)} of {len(runs) + len(failed)} jobs have no results (not in the table):\n" + "\n".join(
            f"- {Path(f['dir']).relative_to(args.dir)}: {f['error'] or 'no status (killed, or still running)'}"
            for f in failed
        )
    out = args.out or args.dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "collect.md").write_text(text + "\n")
    _, _, table = pivot(runs, keys)
    anns = [r["ann"]["acc"] for r in runs]
    plot(table, out / "collect.png", title=f"{args.dir.name}: accuracy vs T", ann=max(anns) if len(set(anns)) == 1 else None)
    print(text)
    print(f"\nwritten: {out / 'collect.md'}, {out / 'collect.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
