"""Memory plans of every preset in conf/experiment, for GPUs of a given memory: per method and phase, the time
chunk and micro-batch `snn.time_chunk=0` would choose and the predicted peak (snnconv.snn.memory). Networks are
built on the meta device (no weights, no memory, no GPU needed).

The budget mirrors what the runner measures on a device of M GiB: the ANN's weights (resident when it plans)
plus `--fraction` (snn.memory_fraction) of the free memory, M minus the CUDA context (`--context-gb`, about
0.5 GiB) minus those weights. A calibration that cannot be split (FTBC) and does not fit is shown as refused,
with the batch size the runner would name.

    python scripts/plan_memory.py [--memory-gb 80 24] [--fraction 0.8] [--presets imagenet_vgg16_qcfs ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from snnconv import SnnconvError
from snnconv.config import register_configs, validate
from snnconv.methods import build_method
from snnconv.runner import build_ann, memory_plan
from snnconv.snn.memory import GiB, profile_network

CONF = Path(__file__).resolve().parents[1] / "conf"
METHODS = ("baseline", "offset_spike", "ftbc", "ftbc_offset_spike")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory-gb", type=float, nargs="+", default=[80.0, 24.0], help="device memory, GiB")
    p.add_argument("--fraction", type=float, default=0.8, help="snn.memory_fraction")
    p.add_argument("--context-gb", type=float, default=0.5, help="CUDA context and library handles, GiB")
    p.add_argument("--presets", nargs="*", default=None, help="default: every conf/experiment preset")
    args = p.parse_args()
    presets = args.presets or sorted(f.stem for f in (CONF / "experiment").glob("*.yaml"))
    register_configs()
    cuda = torch.device("cuda")  # only its type is read: T-long chunks allowed, as on any accelerator
    head = " | ".join(f"{m:g} GiB: chunk / micro / peak GiB" for m in args.memory_gb)
    print(f"budget = ANN weights + {args.fraction} x (memory - {args.context_gb} GiB context - ANN weights)")
    print(f"{'preset':28} | {'method':17} | {'phase':9} | batch | steps | {head}")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for preset in presets:
            for name in METHODS:
                cfg = compose(config_name="config", overrides=[f"experiment={preset}", f"method={name}"])
                validate(cfg)
                method = build_method(cfg.method)
                with torch.device("meta"):
                    model = build_ann(cfg, int(cfg.data.num_classes), int(cfg.data.in_chans))
                shape = (int(cfg.data.in_chans), int(cfg.data.img_size), int(cfg.data.img_size))
                profile = profile_network(model, shape)
                cells: dict[str, list[str]] = {}
                for memory in args.memory_gb:
                    budget = int(profile.weights + args.fraction * (memory - args.context_gb) * GiB
                                 - args.fraction * profile.weights)
                    for phase in ("evaluate", "calibrate"):
                        try:
                            plan = memory_plan(cfg, method, profile, budget, cuda, phase)
                        except SnnconvError as exc:
                            fix = re.search(r"set (method\.batch_size=\d+)", str(exc))
                            cells.setdefault(phase, []).append(f"refused: {fix.group(1) if fix else exc}")
                            continue
                        if plan is not None:
                            cells.setdefault(phase, []).append(
                                f"{plan.chunk:>3} / {plan.micro_batch:>3} / {plan.peak / GiB:6.2f}")
                batches, batch_size = method.calibration_images()
                sizes = {"evaluate": int(cfg.data.test_batch_size), "calibrate": batch_size}
                steps = method.sim_steps(max(int(t) for t in cfg.T))
                for phase, row in cells.items():
                    print(f"{preset:28} | {name:17} | {phase:9} | {sizes[phase]:5} | {steps:5} | "
                          + " | ".join(f"{c:32}" for c in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
