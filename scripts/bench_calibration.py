"""FTBC calibration cost: the one-pass streaming calibration vs the references' per-layer re-simulation
(`naive_calibrate`: one ANN + one T-step SNN forward per layer and batch), and vs one plain T-step SNN forward.

VGG16 (width 1/4, QCFS L=4, random weights, BN statistics warmed up on the images so that every layer spikes),
1 x 32 x 32 inputs, 10 classes. Prints, per T, the median times and the ratios naive/streaming and
streaming/forward. All algorithm code lives in snnconv.methods.ftbc.

    .venv/bin/python scripts/bench_calibration.py            # T = 8 and 32, 2 batches of 64, 3 repeats
    .venv/bin/python scripts/bench_calibration.py --quick    # T = 4, 1 batch of 16, 1 repeat
"""

from __future__ import annotations

import argparse
import functools
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from snnconv.ann.qcfs import QCFS
from snnconv.methods.ftbc import FTBC
from snnconv.methods.reference import naive_calibrate
from snnconv.models import create_model
from snnconv.snn import convert, default_time_chunk
from snnconv.utils import median_time


def make_images(n: int, batch: int, digits: bool, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if digits:
        from sklearn.datasets import load_digits

        x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2 - 1
        x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
        idx = torch.randperm(x.shape[0], generator=gen)[: n * batch]
        return list(x[idx].split(batch))
    return [torch.rand(batch, 1, 32, 32, generator=gen) * 2 - 1 for _ in range(n)]


@torch.no_grad()
def make_ann(width: float, warmup: list[torch.Tensor]) -> torch.nn.Module:
    torch.manual_seed(0)
    ann = create_model(
        "vgg16",
        act_layer=functools.partial(QCFS, L=4, init_threshold=1.0),
        num_classes=10,
        in_chans=1,
        img_size=32,
        width=width,
    )
    for m in ann.modules():  # BN-stat warmup: cumulative averages over the warmup images
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    ann.train()
    for x in warmup:
        ann(x)
    return ann.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[8, 32], help="time steps (calibration T_max)")
    p.add_argument("--batches", type=int, default=2, help="calibration batches (1 iteration)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of streaming / forward (median)")
    p.add_argument("--naive-repeats", type=int, default=1, help="timed repeats of the slow reference")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--time-chunk", type=int, default=0, help="steps per call; 0 = auto (1 on CPU)")
    p.add_argument("--update", default="residual", choices=["residual", "oracle"])
    p.add_argument(
        "--digits", action="store_true", help="sklearn digits (upsampled) instead of random images"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: T=4, 1 batch of 16, 1 repeat")
    args = p.parse_args()
    if args.quick:
        args.T, args.batches, args.batch_size, args.repeats, args.naive_repeats = [4], 1, 16, 1, 1
    torch.set_num_threads(args.threads)

    batches = make_images(args.batches, args.batch_size, args.digits, seed=1)
    ann = make_ann(args.width, make_images(4, args.batch_size, args.digits, seed=0))
    snn = convert(ann, batches[0][:1])
    n_layers = len(snn.neurons())
    method = FTBC(SimpleNamespace(alpha=0.5, iterations=1, update=args.update))
    print(
        f"VGG16 width {args.width}, {n_layers} spiking layers, {args.batches} batch(es) x {args.batch_size}, "
        f"{'digits' if args.digits else 'random'} images, update={args.update}, {args.threads} threads"
    )
    print(
        f"{'T':>4} {'chunk':>5} {'forward s':>10} {'streaming s':>12} {'naive s':>9} {'naive/stream':>13} "
        f"{'stream/fwd':>11}  spike rate"
    )
    for T in args.T:
        chunk = args.time_chunk or default_time_chunk("cpu", T)

        def forward(T=T, chunk=chunk):
            with torch.no_grad():
                for x in batches:
                    snn(x, T, chunk)

        def streaming(T=T, chunk=chunk):
            method.calibrate(snn, ann, batches, T, chunk)

        def naive(T=T, chunk=chunk):
            naive_calibrate(snn, ann, batches, T, chunk, alpha=0.5, iterations=1, update=args.update)

        t_stream = median_time(streaming, args.repeats)
        t_fwd = median_time(forward, args.repeats)  # with the calibrated biases in place
        t_naive = median_time(naive, args.naive_repeats, warmup=0)
        rate = spike_rate(snn, batches[0], T, chunk)
        print(
            f"{T:>4} {chunk:>5} {t_fwd:>10.3f} {t_stream:>12.3f} {t_naive:>9.3f} {t_naive / t_stream:>13.2f} "
            f"{t_stream / t_fwd:>11.2f}  {rate:.3f}"
        )


@torch.no_grad()
def spike_rate(snn, x, T, chunk) -> float:
    """Mean spike probability over all spiking layers (a check that the random network is active)."""
    rates = []
    hooks = [
        n.register_forward_hook(lambda m, i, o: rates.append(float((o > 0).float().mean())))
        for n in snn.neurons().values()
    ]
    snn(x, T, chunk)
    for h in hooks:
        h.remove()
    return sum(rates) / len(rates)


if __name__ == "__main__":
    main()
