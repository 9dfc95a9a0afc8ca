"""Simulation speed: (SNN evaluation time at T) / (T x ANN evaluation time), per `snn.time_chunk`.

A ratio of 1.0 means a simulated step costs exactly one ANN forward; below 1.0 the static first layer (computed
once) and cheap neuron updates win. Images: Fashion-MNIST test images when available, else random ones (the
cost does not depend on the values). Each configuration is warmed up on one batch, then timed over all images
`--repeats` times (median).

    python scripts/bench_simulation.py [--arch resnet20] [--images 2000] [--batch 100] [--T 32] [--stats]

--stats adds the cost of `stats=true` (snnconv.stats counting spikes, SOPs and the conversion error at every T in
--stats-T during the same simulation): evaluation time (ANN + SNN forward per batch, default time_chunk) with
the counter / without, both measured in this run.
"""

from __future__ import annotations

import argparse
import functools

import torch

from snnconv.ann import QCFS
from snnconv.models import create_model
from snnconv.snn import convert, default_time_chunk
from snnconv.stats import SpikeCounter, build_plan
from snnconv.utils import median_time


def load_images(n: int) -> torch.Tensor:
    try:
        from omegaconf import OmegaConf

        from snnconv.config import DataConfig
        from snnconv.data import build_loaders

        cfg = OmegaConf.structured(DataConfig(name="fashion_mnist", limit_test=n, test_batch_size=n, download=False))
        x, _ = next(iter(build_loaders(cfg).test))
        return x, "Fashion-MNIST test"
    except Exception:
        return torch.rand(n, 1, 32, 32) * 2 - 1, "random"


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--chunks", default="1,8,32")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--stats", action="store_true", help="also time evaluation with snnconv.stats counting")
    p.add_argument("--stats-T", default="1,2,4,8,16,32", help="T values the counter reads (<= --T)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    ann = create_model(args.arch, act_layer=functools.partial(QCFS, L=4, init_threshold=2.0), num_classes=10,
                       in_chans=1, img_size=32, width=args.width).to(device).eval()
    x, source = load_images(args.images)
    batches = [b.to(device) for b in x.split(args.batch)]
    snn = convert(ann, batches[0][:1])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_ann(batches=batches):
        for b in batches:
            ann(b)
        sync()

    def run_snn(chunk, batches=batches):
        for b in batches:
            snn(b, args.T, chunk)
        sync()

    run_ann(batches[:1])  # warm-up on one batch (allocator, thread pool)
    t_ann = median_time(run_ann, max(3, args.repeats), warmup=0)
    print(f"{args.arch} (width {args.width}), {len(x)} {source} images, batch {args.batch}, T={args.T}, "
          f"device {device}, {torch.get_num_threads()} threads; ANN pass {t_ann:.3f} s")
    print("time_chunk | SNN(T) / (T x ANN)")
    for chunk in [int(c) for c in args.chunks.split(",") if int(c) <= args.T]:
        run_snn(chunk, batches[:1])
        ratio = median_time(functools.partial(run_snn, chunk), args.repeats, warmup=0) / (args.T * t_ann)
        print(f"{chunk:>10} | {ratio:.3f}")
    print(f"default time_chunk on {device.type}: {default_time_chunk(device, args.T)}")
    if args.stats:
        chunk = default_time_chunk(device, args.T)
        read_at = [t for t in (int(v) for v in args.stats_T.split(",")) if t <= args.T]
        counter = SpikeCounter(build_plan(ann, batches[0][:1]))

        def run_eval(count, batches=batches):
            for b in batches:
                ann(b)
                if count:
                    counter.begin(read_at, b.shape[0])
                snn(b, args.T, chunk)
            sync()

        run_eval(False, batches[:1])
        plain = median_time(functools.partial(run_eval, False), args.repeats, warmup=0)
        with counter.attached(snn, ann):
            run_eval(True, batches[:1])
            counted = median_time(functools.partial(run_eval, True), args.repeats, warmup=0)
        print(f"stats=true / stats=false evaluation (T={args.T}, read at {read_at}, time_chunk {chunk}): "
              f"{counted / plain:.3f} ({counted:.2f} s / {plain:.2f} s)")


if __name__ == "__main__":
    main()
