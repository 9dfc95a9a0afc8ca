"""Entry point: `python run.py [group=option ...] [key=value ...]` (Hydra 1.3; `-m` for sweeps).

Examples:
  python run.py                                              # digits, ResNet-20, QCFS L=4, baseline
  python run.py method=ftbc arch=vgg16 data=cifar100 'T=[1,2,4,8,16,32]'
  python run.py -m method=ftbc method.alpha=0.1,0.3,0.5
A user error (bad value, missing data, checkpoint that does not fit) prints one line and exits with code 2.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from snnconv import SnnconvError
from snnconv.config import register_configs, validate

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
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


if __name__ == "__main__":
    main()
