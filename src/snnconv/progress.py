"""Progress bars that suit both a terminal and a log file (SLURM, nohup): tqdm refreshing every 0.1 s on a
terminal and every 60 s otherwise, so a multi-hour job's log is not flooded with carriage-return frames."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(iterable, **kwargs) -> tqdm:
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(iterable, mininterval=0.1 if interactive else 60.0, **kwargs)
