"""Evaluation on W ranks against one process: wall time of `snnconv.evaluate` over the same test images, as ratios
measured in one run, with the CPU core count stated.

Each configuration runs in its own fresh process group, started by torchrun (`python -m torch.distributed.run
--standalone`; one process is started the same way, with one rank), so all pay the same start-up and only the
evaluation is timed: a barrier, the ranks' `evaluate` over their shards (whole batches, `shard_batches`), the
count all-reduce, a barrier; median of `--repeats` such passes. The accuracies of every configuration are
printed too: they must be identical.

Configurations: 1 rank x 1 thread, 1 rank x C threads (C = the cores this process may use), W ranks x C/W threads.

    python scripts/bench_distributed.py [--ranks 2] [--images 1000] [--T 16] [--arch vgg16 --width 0.25]
        [--checkpoint /work/cache/ckpt/fashion_mnist-vgg16-qcfs-<hash>.pt] [--data-root data] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One rank (started by torchrun): evaluate this rank's shard; rank 0 prints one JSON line."""
    from omegaconf import OmegaConf

    from snnconv import distributed
    from snnconv.ann import QCFS
    from snnconv.config import DataConfig
    from snnconv.data import build_loaders
    from snnconv.evaluate import evaluate
    from snnconv.methods.baseline import Baseline
    from snnconv.models import create_model
    from snnconv.snn import convert
    from snnconv.train import load_state

    torch.set_num_threads(args.threads)
    distributed.init()
    cpu = torch.device("cpu")
    data = OmegaConf.structured(DataConfig(
        name="fashion_mnist", root=args.data_root, download=False, limit_test=args.images,
        test_batch_size=args.batch, num_workers=0, calib_size=1,
    ))
    with distributed.main_first():
        test = build_loaders(data).test
    torch.manual_seed(0)
    ann = create_model(args.arch, act_layer=functools.partial(QCFS, L=4, init_threshold=2.0), num_classes=10,
                       in_chans=1, img_size=32, width=args.width).eval()
    if args.checkpoint:
        load_state(ann, args.checkpoint)
    snn = convert(ann, next(iter(test))[0][:1])
    shard = distributed.shard_batches(test)
    warm = next(iter(test))[0]
    with torch.no_grad():
        snn(warm, 2, 1)  # allocator, thread pool
        ann(warm)
    times = []
    for _ in range(args.repeats):
        distributed.barrier()
        start = time.perf_counter()
        ev = evaluate(snn, ann, shard, [args.T], Baseline(), cpu, 1, progress=False)
        distributed.barrier()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    if distributed.is_main():
        print("RESULT " + json.dumps({"seconds": seconds, "acc": ev["acc"], "ann_acc": ev["ann_acc"],
                                      "images": ev["images"]}), flush=True)


def measure(args, ranks: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--images", str(args.images),
           "--T", str(args.T), "--batch", str(args.batch), "--arch", args.arch, "--width", str(args.width),
           "--data-root", args.data_root, "--repeats", str(args.repeats)] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{ranks} ranks x {threads} threads failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--arch", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--checkpoint", default=None, help="a trained state dict (default: random weights)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--repeats", type=int, default=3, help="timed evaluation passes per configuration (median)")
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    cores = len(os.sched_getaffinity(0))
    per_rank = max(1, cores // args.ranks)
    print(f"{platform.processor() or platform.machine()}, {cores} cores usable, load average "
          f"{os.getloadavg()[0]:.2f} at start; {args.arch} width {args.width}, QCFS L=4, "
          f"{'weights ' + Path(args.checkpoint).name if args.checkpoint else 'random weights'}; "
          f"{args.images} Fashion-MNIST test images, batch {args.batch}, T={args.T}, baseline, time_chunk 1, "
          f"median of {args.repeats}")
    runs = {
        "1 rank x 1 thread": measure(args, 1, 1),
        f"1 rank x {cores} threads": measure(args, 1, cores),
        f"{args.ranks} ranks x {per_rank} thread(s)": measure(args, args.ranks, per_rank),
    }
    for name, r in runs.items():
        print(f"{name:>24}: {r['seconds']:8.2f} s   SNN acc {r['acc'][str(args.T)]:.2f} %   images {r['images']}")
    results = list(runs.values())
    same = all(r["acc"] == results[0]["acc"] and r["images"] == results[0]["images"] for r in results)
    dist = results[-1]["seconds"]
    print(f"speed-up of {args.ranks} ranks: {results[0]['seconds'] / dist:.2f}x over 1 rank x 1 thread, "
          f"{results[1]['seconds'] / dist:.2f}x over 1 rank x {cores} threads; identical accuracies: {same}")


if __name__ == "__main__":
    main()
