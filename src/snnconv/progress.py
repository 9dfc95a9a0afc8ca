"""Progress bars that suit both a terminal and a log file (SLURM, nohup): tqdm refreshing every 0.1 s on a
terminal and every 60 s otherwise, so a multi-hour job's log is not flooded with carriage-return frames. Every bar
draws its final state before it closes, so run.log (snnconv.jobs) records how long each phase took."""

from __future__ import annotations

import sys

from tqdm import tqdm


class _Bar(tqdm):
    def close(self) -> None:
        if not self.disable and not getattr(self, "_closed_once", False):
            self._closed_once = True
            self.refresh()  # draw the final count and time before a leave=False bar clears its line: a log
        super().close()     # that keeps only completed frames (snnconv.jobs' run.log) then shows how it ended


def progress_bar(iterable, **kwargs) -> tqdm:
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return _Bar(iterable, mininterval=0.1 if interactive else 60.0, **kwargs)


class ProgressLoader:
    """A loader (or any sized iterable of batches) whose every pass shows a progress bar `desc`; `dataset` and
    other attributes are the wrapped loader's, so code that reads `len(loader.dataset)` is unchanged."""

    def __init__(self, loader, desc: str, disable: bool = False):
        self.loader, self.desc, self.disable = loader, desc, disable

    def __iter__(self):
        return iter(progress_bar(self.loader, total=len(self.loader), desc=self.desc, disable=self.disable,
                                 leave=False))

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)
