"""Checks of the environment a run needs, made before any data is loaded or any network trained.

- `require_writable_dir(path, key)`: writes a probe file in the folder (or in its nearest existing parent), so an
  output or cache folder that cannot be written is refused with one line naming the config key to change (a
  permission test alone would not do: root passes every `os.access` check; a folder under a regular file never
  exists).
- `remove_stale_tmp(folder)`: deletes the `.<name>.<random>.tmp` files that `snnconv.utils`' atomic writes leave
  behind when a process is killed mid-write (older than an hour, so a write in progress in a parallel job is
  never touched).
Errors raised: `SnnconvError` (one line: what failed, why, the setting that fixes it).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from snnconv import SnnconvError

STALE_TMP_AGE_S = 3600.0


def one_line(text: object) -> str:
    """`text` with every run of whitespace (newlines included) folded into one space."""
    return " ".join(str(text).split())


def require_writable_dir(path: str | os.PathLike, key: str, fix: str | None = None) -> Path:
    """Check that `path` can be written: a probe file is created and removed in it or, when it does not exist
    yet, in its nearest existing parent (which is what creating it takes). Nothing is left behind, nothing is
    created. Returns `path` as an absolute Path.

    Raises SnnconvError naming `key` (the config key that set the folder) and `fix` (default: set `key` to a
    writable folder) when the folder could not be created or written.
    """
    p = Path(path).expanduser().absolute()
    fix = fix or f"set {key} to a writable folder"
    existing = next((a for a in [p, *p.parents] if a.exists()), None)
    if existing is None:
        raise SnnconvError(f"{key}={path} cannot be created: no parent folder exists; {fix}")
    if not existing.is_dir():
        raise SnnconvError(f"{key}={path} cannot be created: {existing} is a file, not a folder; {fix}")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write-probe-"):
            pass
    except OSError as exc:
        reason = one_line(exc.strerror or exc)
        where = "" if existing == p else f" (its parent {existing} exists)"
        raise SnnconvError(f"{key}={path} is not writable{where}: {reason}; {fix}") from exc
    return p


def remove_stale_tmp(folder: str | os.PathLike, older_than_s: float = STALE_TMP_AGE_S) -> list[Path]:
    """Delete `.*.tmp` files (killed atomic writes) in `folder` last modified more than `older_than_s` seconds
    ago; returns the removed paths. Never raises (a file that vanished or cannot be removed is skipped)."""
    removed = []
    cutoff = time.time() - older_than_s
    try:
        candidates = list(Path(folder).glob(".*.tmp"))
    except OSError:
        return removed
    for f in candidates:
        try:
            if f.is_file() and f.stat().st_mtime < cutoff:
                f.unlink()
                removed.append(f)
        except OSError:
            continue
    return removed
