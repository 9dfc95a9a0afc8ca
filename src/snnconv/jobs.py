"""One Hydra job's safety net and a sweep's bookkeeping, through Hydra's own callback mechanism.

Library used: Hydra's `hydra.experimental.callback.Callback` (configured under `hydra.callbacks` in
conf/config.yaml), because its hooks run at the right places for every launcher: `on_run_start` /
`on_multirun_start` on the submitting machine before any job starts (folders and launcher checked there),
`on_job_end` wherever the job ran (it writes the job's `status.json`, so a SLURM job reports through the shared
file system), and `on_multirun_end` back on the submitting machine (it reads them and prints "k of n jobs
failed").

- `execute(cfg, out_dir, ...)`: the task body. Returns `Finished` (a float: accuracy at the largest T, what
  sweepers read) or `JobFailed`; a user error (`SnnconvError`) prints one line on stderr and never escapes, so
  one bad job of a sweep does not stop the others (`sys.exit` inside a task would escape Hydra's per-job
  handling). A job whose folder (or, in a sweep, any job folder of the sweep) already holds complete results
  for the same config is skipped. Everything printed is also appended to the job's `run.log`.
- `JobReport`: the callback. After a sweep it prints `k of n jobs failed: ...` and sets the exit code that
  run.py returns (`exit_code()`): 0, 2 when every failure was a user error, else 1.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from snnconv import SnnconvError
from snnconv.checks import one_line, require_writable_dir
from snnconv.report import config_hash, finished_results

STATUS_FILE = "status.json"
_EXIT_CODE = 0


def exit_code() -> int:
    """The exit code the last run / sweep asks for (set by `JobReport`)."""
    return _EXIT_CODE


def _set_exit_code(code: int) -> None:
    global _EXIT_CODE
    _EXIT_CODE = code


@dataclass
class JobFailed:
    """What a failed job returns to Hydra instead of raising: the one-line reason and whether it was the user's
    (a bad setting: exit code 2) or a crash (a bug or an I/O failure: exit code 1)."""

    message: str
    user_error: bool = True

    @property
    def exit_code(self) -> int:
        return 2 if self.user_error else 1


class Finished(float):
    """A finished job's return value: the SNN accuracy (%) at the largest T, with `skipped=True` when the job
    was not run because complete results for the same config were already there."""

    skipped: bool = False

    def __new__(cls, value: float, skipped: bool = False):
        obj = super().__new__(cls, value)
        obj.skipped = skipped
        return obj

    def __reduce__(self):  # pickled across processes by remote launchers
        return (Finished, (float(self), self.skipped))


# ---- everything printed also reaches run.log ------------------------------------------------------------------


class _LogSink:
    """Appends complete lines to a log file with a timestamp and the stream's name. Progress-bar frames (text
    ended by a carriage return) are written at most every `frame_interval_s` per stream, plus each bar's last
    frame, so the log shows every phase's progress without the terminal's 10 frames a second."""

    def __init__(self, path: Path, frame_interval_s: float = 30.0):
        self.fh = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.interval = frame_interval_s
        self.pending: dict[str, str] = {}
        self.frame: dict[str, tuple[str, bool]] = {}  # stream -> (last frame, already written)
        self.last_frame_time: dict[str, float] = {}
        self.after_cr: dict[str, bool] = {}  # the stream's last separator was a carriage return (a bar is drawing)

    def _emit(self, tag: str, line: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        try:
            self.fh.write(f"[{stamp}][{tag}] {line.rstrip()}\n")
        except (OSError, ValueError):
            pass

    def _flush_frame(self, tag: str) -> None:
        frame, written = self.frame.pop(tag, ("", True))
        if not written and frame.strip():
            self._emit(tag, frame)

    def _frame(self, tag: str, piece: str) -> None:
        now = time.monotonic()
        due = now - self.last_frame_time.get(tag, -1e9) >= self.interval
        if due:
            self._emit(tag, piece)
            self.last_frame_time[tag] = now
        self.frame[tag] = (piece, due)

    def feed(self, tag: str, text: str) -> None:
        buf = self.pending.get(tag, "") + text
        while True:
            cut = min((i for i in (buf.find("\n"), buf.find("\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            piece, sep, buf = buf[:cut], buf[cut], buf[cut + 1:]
            if sep == "\n":
                if piece.strip():
                    self.frame.pop(tag, None)
                    self._emit(tag, piece)
                else:
                    self._flush_frame(tag)
                self.after_cr[tag] = False
            else:
                if piece.strip():  # a progress frame ended by the next frame's carriage return
                    self._frame(tag, piece)
                elif piece:  # blanks between carriage returns: a bar cleared its line, it finished
                    self._flush_frame(tag)
                self.after_cr[tag] = True
        if self.after_cr.get(tag) and buf.strip():  # tqdm writes "\r<frame>" in one call: the frame is complete
            self._frame(tag, buf)
            buf = ""
        self.pending[tag] = buf

    def close(self) -> None:
        for tag, rest in self.pending.items():
            if rest.strip():
                self._emit(tag, rest)
            self._flush_frame(tag)
        with contextlib.suppress(OSError):
            self.fh.close()


class _Tee:
    """A text stream that writes to `real` and feeds a `_LogSink`; everything else is `real`'s."""

    def __init__(self, real: TextIO, sink: _LogSink, tag: str):
        self._real, self._sink, self._tag = real, sink, tag

    def write(self, text: str) -> int:
        self._sink.feed(self._tag, text)
        return self._real.write(text)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextlib.contextmanager
def tee_to_log(path: str | os.PathLike | None) -> Iterator[None]:
    """Inside the block, stdout and stderr are also appended to `path` (Hydra's `<job name>.log`), one
    timestamped line per printed line, progress bars rate-limited (see `_LogSink`). No-op for None or a log
    that cannot be opened."""
    if path is None:
        yield
        return
    try:
        sink = _LogSink(Path(path))
    except OSError:
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, sink, "stdout"), _Tee(sys.stderr, sink, "stderr")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        sink.close()


# ---- the task body -------------------------------------------------------------------------------------------


def execute(cfg: DictConfig, out_dir: str | os.PathLike, *, log_path: str | os.PathLike | None = None,
            sweep_dir: str | os.PathLike | None = None, catch_all: bool = False) -> Finished | JobFailed:
    """Run one job: check the config and the environment (device, folders), skip the job when complete results
    for the same config exist (in `out_dir`, or in a sweep's job folders under `sweep_dir`), else run the
    pipeline into `out_dir`.

    Returns Finished(accuracy at the largest T) or JobFailed. A SnnconvError prints `error: <one line>` on
    stderr; any other exception propagates unless `catch_all` (sweeps: the traceback is printed and the other
    jobs still run). With `log_path`, everything printed is appended there too.
    """
    out_dir = Path(out_dir)
    with tee_to_log(log_path):
        try:
            from snnconv.config import check_input_size, validate
            from snnconv.runner import check_environment, run

            validate(cfg)  # a bad value is refused even where results for the rest of the config exist
            check_input_size(cfg)
            check_environment(cfg, out_dir)
            digest = config_hash(OmegaConf.to_container(cfg, resolve=True))
            folders = [out_dir]
            if sweep_dir is not None:
                folders += sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and p != out_dir)
            done = finished_results(digest, folders)
            if done is not None:
                acc = json.loads(done.read_text())["snn"]["acc"]
                print(f"skipped: complete results for this config are already in {done.parent} (delete that "
                      f"folder's results.json to run it again)")
                return Finished(acc[max(acc, key=int)], skipped=True)
            results = run(cfg, out_dir)
        except SnnconvError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            return JobFailed(one_line(exc), user_error=True)
        except KeyboardInterrupt:  # Ctrl-C (SIGINT): say what survives, then stop (SIGTERM is left to submitit)
            write_interrupted_status(out_dir)
            print(f"interrupted: {INTERRUPTED_FIX}", file=sys.stderr, flush=True)
            raise
        except Exception as exc:
            if not catch_all:
                raise
            traceback.print_exc()
            return JobFailed(one_line(f"{type(exc).__name__}: {exc}"), user_error=False)
    acc = results["snn"]["acc"]
    return Finished(acc[max(acc, key=int)])


INTERRUPTED_FIX = (
    "run the same command again: finished results and cached networks are kept, and ANN training and fine-tuning "
    "continue from their last resume checkpoint in checkpoint_dir (train.save_every, finetune.save_every)"
)


def write_interrupted_status(out_dir: Path) -> None:
    """status.json of a job stopped by Ctrl-C (Hydra's job-end callback does not run then)."""
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) > 0:
        return
    status = {"status": "interrupted", "error": "interrupted (Ctrl-C)", "exit_code": 130,
              "time": datetime.datetime.now().isoformat(timespec="seconds")}
    with contextlib.suppress(OSError):
        (out_dir / STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")


# ---- the Hydra callback -------------------------------------------------------------------------------------


def _select(config: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(config, key, throw_on_resolution_failure=True)
    except Exception:
        return None


def safe_dirname(text: str, limit: int = 150) -> str:
    """A folder name from Hydra's `override_dirname`: path separators become `_` (an override such as
    `ann.checkpoint=/a/b.pt` must not nest folders), and names longer than `limit` are cut and end with a
    hash of the whole (file systems refuse names over 255 bytes). Registered as the `snnconv.dirname` resolver."""
    name = str(text).replace(os.sep, "_").replace("/", "_")
    if len(name.encode()) > limit:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name.encode()[: limit - 9].decode(errors="ignore") + "~" + digest
    return name


# Config groups that the defaults list chooses by itself (not a user's choice), hidden from --help.
INTERNAL_GROUPS = ("method_data", "method_debug", "method_experiment", "preset")


def help_groups() -> str:
    """`--help`'s list of config groups a user can choose, one `group: option, ...` line each: Hydra's own list
    without the internal groups and the method schemas (`<name>_schema`, the defaults of `method/<name>`).
    Registered as the `snnconv.help_groups` resolver, used by `hydra.help.template` in conf/config.yaml."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    lines = []
    for group in sorted(loader.list_groups("")):
        if group.startswith("hydra") or group in INTERNAL_GROUPS:
            continue
        options = [o for o in sorted(loader.get_group_options(group)) if not o.endswith("_schema")]
        if options:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("snnconv.dirname"):
        OmegaConf.register_new_resolver("snnconv.dirname", safe_dirname)
    if not OmegaConf.has_resolver("snnconv.help_groups"):
        OmegaConf.register_new_resolver("snnconv.help_groups", help_groups)


register_resolvers()


def _check_launcher(config: DictConfig) -> None:
    import shutil

    target = str(_select(config, "hydra.launcher._target_") or "")
    if target.endswith("SlurmLauncher") and shutil.which("srun") is None:
        raise SnnconvError(
            "hydra/launcher=slurm needs SLURM (srun is not on PATH here): run the sweep on a SLURM login node, "
            "or drop hydra/launcher=slurm to run the jobs one after another on this machine"
        )


def _stop_on_user_error(check, *args: Any) -> None:
    try:
        check(*args)
    except SnnconvError as exc:
        raise SystemExit(f"error: {one_line(exc)}") from None


class JobReport(Callback):
    """Hydra callback (`hydra.callbacks.jobs` in conf/config.yaml); see the module docstring."""

    def __init__(self) -> None:
        self.sweep_id: str | None = None
        self.started = 0.0

    # Hydra turns an exception raised by a callback into a warning and goes on; a check that must stop the run
    # raises SystemExit("error: <one line>") instead, which run.py prints as it is (exit code 2).

    # RUN mode
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _set_exit_code(0)
        run_dir = _select(config, "hydra.run.dir")
        if run_dir is not None and not _select(config, "output_dir"):
            _stop_on_user_error(require_writable_dir, run_dir, "hydra.run.dir")

    def on_run_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, JobFailed):
            _set_exit_code(value.exit_code)

    # MULTIRUN mode
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _set_exit_code(0)
        self.sweep_id, self.started = uuid.uuid4().hex, time.time()
        _stop_on_user_error(_check_launcher, config)
        sweep_dir = _select(config, "hydra.sweep.dir")
        if sweep_dir is not None:
            _stop_on_user_error(require_writable_dir, sweep_dir, "hydra.sweep.dir")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, BaseException):
            value = JobFailed(one_line(f"{type(value).__name__}: {value}"), user_error=False)
        status = {
            "status": "failed" if isinstance(value, JobFailed) else
                      "skipped" if getattr(value, "skipped", False) else "finished",
            "error": value.message if isinstance(value, JobFailed) else None,
            "exit_code": value.exit_code if isinstance(value, JobFailed) else 0,
            "overrides": list(getattr(job_return, "overrides", None) or []),
            "job_num": _select(config, "hydra.job.num"),
            "sweep": self.sweep_id,
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        out = _select(config, "hydra.runtime.output_dir")
        if out is None or int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) > 0:
            return  # ranks > 0 of a torchrun / srun launch leave the job's files to rank 0
        try:
            (Path(out) / STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")
        except OSError as exc:
            print(f"warning: cannot write {Path(out) / STATUS_FILE} ({one_line(exc)})", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(_select(config, "hydra.sweep.dir")))
        statuses = []
        for path in sorted(sweep_dir.glob(f"*/{STATUS_FILE}")):
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if status.get("sweep") == self.sweep_id:
                statuses.append({**status, "dir": path.parent.name})
        n = len(statuses)
        failed = [s for s in statuses if s["status"] == "failed"]
        skipped = sum(s["status"] == "skipped" for s in statuses)
        note = f" ({skipped} skipped: results already complete)" if skipped else ""
        if not failed:
            print(f"{n} of {n} jobs finished{note}; results in {sweep_dir}")
            return
        common = set.intersection(*(set(s["overrides"]) for s in statuses))  # show what differs per job

        def job(s: dict) -> str:
            own = " ".join(o for o in s["overrides"] if o not in common)
            return f"#{s['job_num']}" + (f" ({own})" if own else "")

        listed = "; ".join(f"{job(s)}: {s['error']}" for s in failed[:5])
        more = f"; +{len(failed) - 5} more" if len(failed) > 5 else ""
        print(
            f"error: {len(failed)} of {n} jobs failed{note}: {listed}{more}. Fix them and rerun the same command "
            f"with hydra.sweep.dir={sweep_dir} to run only the jobs without complete results",
            file=sys.stderr, flush=True,
        )
        _set_exit_code(2 if all(s.get("exit_code") == 2 for s in failed) else 1)
