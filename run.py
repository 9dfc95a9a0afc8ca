"""Entry point: `python run.py [group=option ...] [key=value ...]` (Hydra 1.3; `-m` for sweeps).

Examples:
  python run.py                                              # digits, ResNet-20, QCFS L=4, baseline
  python run.py method=ftbc arch=vgg16 data=cifar100 'T=[1,2,4,8,16,32]'
  python run.py -m method=ftbc method.alpha=0.1,0.3,0.5
  torchrun --nproc_per_node=4 run.py method=ftbc data=cifar100   # 4 ranks (README: "Many GPUs and clusters")
A user error (bad value, missing data, checkpoint that does not fit) prints one line and exits with code 2.
A sweep runs every job even when some fail, then prints "k of n jobs failed" and exits non-zero; rerun it with
hydra.sweep.dir=<its folder> and the jobs with complete results are skipped (snnconv.jobs, a Hydra callback).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TextIO

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from snnconv import SnnconvError, jobs
from snnconv.config import register_configs, schema_fields, unknown_key_message

register_configs()


class _StartupErrors:
    """Holds stderr until the task starts, so a composition error (unknown key, wrong type, missing option)
    prints as one line instead of Hydra's multi-line report; everything after start-up passes straight through."""

    def __init__(self, real: TextIO):
        self.real, self.buffer = real, []

    def write(self, text: str) -> int:
        self.buffer.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self.real, name)

    def release(self) -> None:
        """Task started: restore stderr and replay what start-up wrote."""
        sys.stderr = self.real
        self.real.write("".join(self.buffer))
        self.buffer.clear()

    def one_line(self) -> str:
        """Start-up's report as one line: the last line of a Python traceback (an error raised by a callback,
        e.g. an unwritable hydra.run.dir, or by a launcher), else Hydra's composition message."""
        text = "".join(self.buffer)
        if "Traceback (most recent call last)" in text:
            last = [ln.strip() for ln in text.splitlines() if _EXCEPTION_LINE.match(ln.strip())]
            if last:
                name, _, message = last[-1].partition(": ")
                return message if name.endswith("SnnconvError") else f"{message} ({name.rsplit('.', 1)[-1]})"
        listed = _NOT_A_LIST.search(text)
        if listed:  # OmegaConf's "int is not a ListConfig" for T=4 names no fix
            key, value = listed.group(1), listed.group(2)
            return f"{key} is a list: write '{key}=[{value}]' (e.g. 'T=[1,2,4,8]'), quoted for the shell"
        typed = _WRONG_TYPE.search(text)
        if typed:  # OmegaConf's "Value 'four' of type 'str' could not be converted to Integer; full_key: ..."
            key, value, kind = typed.group(1), typed.group(2), (typed.group(3) or typed.group(4)).lower()
            word, example = _TYPE_WORDS.get(kind, (f"a {kind}", None))
            if value.startswith("["):
                return f"{key}={value}: every element must be {word}"
            fix = f"write e.g. {key}={example}" if example else f"write {key}=true or {key}=false"
            return f"{key}={value} is not {word}: {fix}"
        unknown = _UNKNOWN_KEY.search(text)
        if unknown and (valid := schema_fields(unknown.group(2))):  # Hydra advises '+key=...', which nothing reads
            return unknown_key_message(unknown.group(1), valid)
        plugin = _MISSING_PLUGIN.search(text)
        if plugin:  # Hydra's "Could not load 'hydra/launcher/submitit_slurm'" names no fix
            return (f"hydra/launcher={plugin.group(1)} needs Hydra's submitit launcher plugin, "
                    "which is not installed: pip install -e '.[slurm]' (hydra-submitit-launcher)")
        text = text.split("Config search path")[0]  # Hydra's search-path dump is noise here
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return "; ".join(ln for ln in lines if "HYDRA_FULL_ERROR" not in ln) or "invalid command line"


_NOT_A_LIST = re.compile(r"Error merging override ([\w.]+)=(\S+)\n.*is not a ListConfig, list or tuple")
_WRONG_TYPE = re.compile(r"Error merging override ([\w.]+)=(.*)\n.*Value '.*'(?: of type '\w+')? "
                         r"(?:could not be converted to (\w+)|is not a valid (\w+))")
_TYPE_WORDS = {"integer": ("an integer", "4"), "float": ("a number", "0.5"), "bool": ("true or false", None)}
_UNKNOWN_KEY = re.compile(r"Could not override '([\w.]+)'\.\n(?:.*\n)*?Key '\w+' not in '(\w+)'")
_MISSING_PLUGIN = re.compile(r"In 'hydra/launcher/(\w+)': Could not load 'hydra/launcher/submitit_\w+'")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt): ")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | jobs.JobFailed:
    if isinstance(sys.stderr, _StartupErrors):
        sys.stderr.release()
    hc = HydraConfig.get()
    out_dir = cfg.output_dir or hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    return jobs.execute(
        cfg, out_dir,
        log_path=Path(hc.runtime.output_dir) / f"{hc.job.name}.log" if _rank() == 0 else None,
        sweep_dir=hc.sweep.dir if multirun else None,
        catch_all=multirun,
    )


def _rank() -> int:
    """This process's rank (0 without torchrun / srun): only rank 0 appends what it prints to the run's log."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def _join_ranks() -> None:
    """Ranks started by torchrun or srun join their process group BEFORE Hydra starts, so that they share rank
    0's start time (one run directory: `${start_time:...}` in conf/config.yaml); ranks > 0 leave Hydra's own
    files (.hydra/, the job log) to rank 0. One process: nothing happens (torch is not even imported here)."""
    if not {"RANK", "SLURM_STEP_NUM_TASKS"} & set(os.environ):
        return
    from snnconv import distributed

    try:
        distributed.init()
    except SnnconvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if distributed.rank() > 0:
        for override in ("hydra.output_subdir=null", "hydra/job_logging=stdout"):
            key = override.split("=")[0]
            if not any(arg.lstrip("+~").startswith(key + "=") for arg in sys.argv[1:]):
                sys.argv.append(override)




def cli() -> int:
    """`python run.py ...` (arguments from sys.argv): the exit code. 0; 2 for a user error (one line on stderr);
    for a sweep with failed jobs 2 when every failure was a user error, else 1; a crash of a single run keeps
    Hydra's traceback and exit code 1; 130 after Ctrl-C (one line saying how to go on)."""
    guard = sys.stderr = _StartupErrors(sys.stderr)
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, str):  # "error: <one line>" from a check in a Hydra callback (snnconv.jobs)
            sys.stderr = guard.real
            print(exc.code, file=sys.stderr)
            return 2
        if sys.stderr is guard and exc.code not in (0, None):
            sys.stderr = guard.real
            print(f"error: {guard.one_line()}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:  # jobs.execute printed what survives and how to go on
        return 130
    finally:
        if sys.stderr is guard:
            guard.release()
    return jobs.exit_code()  # set by the jobs.JobReport callback: a failed run, or failed jobs of a sweep


if __name__ == "__main__":
    _join_ranks()
    sys.exit(cli())
