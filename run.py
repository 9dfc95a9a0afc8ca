"""Entry point: `python run.py [group=option ...] [key=value ...]` (Hydra 1.3; `-m` for sweeps).

Examples:
  python run.py                                              # digits, ResNet-20, QCFS L=4, baseline
  python run.py method=ftbc arch=vgg16 data=cifar100 'T=[1,2,4,8,16,32]'
  python run.py -m method=ftbc method.alpha=0.1,0.3,0.5
  torchrun --nproc_per_node=4 run.py method=ftbc data=cifar100   # 4 ranks (README: "Many GPUs and clusters")
A user error (bad value, missing data, checkpoint that does not fit) prints one line and exits with code 2.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from snnconv import SnnconvError
from snnconv.config import register_configs, validate

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
        text = "".join(self.buffer).split("Config search path")[0]  # Hydra's search-path dump is noise here
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return "; ".join(ln for ln in lines if "HYDRA_FULL_ERROR" not in ln) or "invalid command line"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    if isinstance(sys.stderr, _StartupErrors):
        sys.stderr.release()
    try:
        validate(cfg)
        from snnconv.runner import run

        out_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
        results = run(cfg, out_dir)
    except SnnconvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    acc = results["snn"]["acc"]
    return float(acc[max(acc, key=int)])  # for sweepers: accuracy at the largest T


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


if __name__ == "__main__":
    _join_ranks()
    guard = sys.stderr = _StartupErrors(sys.stderr)
    try:
        main()
    except SystemExit as exc:
        if sys.stderr is guard and exc.code not in (0, None):
            sys.stderr = guard.real
            print(f"error: {guard.one_line()}", file=sys.stderr)
            sys.exit(2)
        raise
    finally:
        if sys.stderr is guard:
            guard.release()
