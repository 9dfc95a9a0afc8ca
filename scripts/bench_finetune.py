"""Fine-tuning cost: one BPTT step (LocalZO / surrogates) against one ANN training step, and its memory vs T and batch.

Time: median seconds of one training step (forward, CE backward, Adam step; batch --batch) of the ANN and of the
converted SNN fine-tuned as `snnconv.finetune` does it (`SpikingNetwork.differentiable`: the deployed IF dynamics
out of place, the spike's local gradient from `snnconv.finetune.local_gradient`, detached reset) for every rule and
T in one run, after one warm-up step; ratio = SNN step / ANN step (the `ratio_to_ann_epoch` of results.json).

Memory: bytes that autograd saves for the backward pass of one step (torch.autograd.graph.saved_tensors_hooks,
each storage counted once, the
network's own parameters and buffers left out): what BPTT holds at its peak beyond weights and optimizer state, device independent;
on CUDA also torch.cuda.max_memory_allocated. Printed per T x batch, with bytes per image-step, to show the
growth: linear in T and in the batch (every step's activations are kept for the backward pass).

Random QCFS weights and inputs (the cost does not depend on the values; LocalZO's zero share does, so it is not
reported here: see results.json's backward_sparsity on a trained network).

    python scripts/bench_finetune.py [--arch vgg16 --width 0.25] [--img 32] [--batch 64] [--T 1,2,4]
                                     [--rules localzo,gauss,sigmoid] [--mem-batches 16,64] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F

from snnconv.ann import QCFS
from snnconv.finetune import FinetuneConfig, local_gradient, loss_fn
from snnconv.models import create_model
from snnconv.snn import convert
from snnconv.snn.surrogate import TrainingSpike

MiB = 2**20


def rule_config(rule: str) -> FinetuneConfig:
    return FinetuneConfig(name="localzo") if rule == "localzo" else FinetuneConfig(name="surrogate", surrogate=rule)


def saved_bytes(fn, module: torch.nn.Module) -> int:
    """Bytes of the distinct storages autograd saves while `fn()` builds its graph, `module`'s own parameters and
    buffers left out (they exist anyway): the activations BPTT keeps."""
    own = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--img", type=int, default=32, help="image side (the CPU presets: VGG16 w/4 at 32, ResNet-20 at 28)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--T", default="1,2,4")
    p.add_argument("--rules", default="localzo,gauss,sigmoid")
    p.add_argument("--mem-batches", default="16,64", help="batches for the saved-bytes table (at every T)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    Ts = [int(t) for t in args.T.split(",")]
    torch.manual_seed(0)
    ann = create_model(args.arch, act_layer=functools.partial(QCFS, L=4, init_threshold=2.0), num_classes=10,
                       in_chans=1, img_size=args.img, width=args.width).to(device)
    x = torch.rand(args.batch, 1, args.img, args.img, device=device) * 2 - 1
    y = torch.randint(0, 10, (args.batch,), device=device)
    snn = convert(ann.eval(), x[:1])
    gen = torch.Generator(device=device).manual_seed(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(step) -> float:
        step()  # warm-up
        times = []
        for _ in range(args.steps):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    ann_opt = torch.optim.Adam(ann.parameters(), lr=1e-4)

    def ann_step(xb=x, yb=y):
        loss = F.cross_entropy(ann(xb), yb)
        ann_opt.zero_grad(set_to_none=True)
        loss.backward()
        ann_opt.step()

    ann.train()
    t_ann = timed(ann_step)
    mem_ann = saved_bytes(lambda: F.cross_entropy(ann(x), y), ann)
    ann.eval()
    snn_opt = torch.optim.Adam(snn.parameters(), lr=1e-4)
    cfg_ce = FinetuneConfig()

    print(f"{args.arch} width {args.width}, {args.img}x{args.img}, batch {args.batch}, {device}, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps each")
    print(f"ANN training step: {t_ann:.4f} s; autograd saves {mem_ann / MiB:.1f} MiB")
    print()
    print("rule    | T | s / step | ratio to ANN step")
    print("--------+---+----------+------------------")
    for rule in args.rules.split(","):
        train = TrainingSpike(local_gradient(rule_config(rule), gen), True, None)
        for T in Ts:
            def snn_step(T=T):
                loss = loss_fn(snn(x, T, 1), y, cfg_ce)
                snn_opt.zero_grad(set_to_none=True)
                loss.backward()
                snn_opt.step()

            with snn.differentiable(train):
                t = timed(snn_step)
            print(f"{rule:7s} | {T} | {t:8.4f} | {t / t_ann:6.2f}")
    print()
    print("autograd saved bytes of one BPTT step (LocalZO; the rule does not change them)")
    print("batch | T | saved MiB | KiB per image-step | ANN MiB at this batch" + (" | CUDA peak MiB" if device.type == "cuda" else ""))
    train = TrainingSpike(local_gradient(rule_config("localzo"), gen), True, None)
    for b in [int(v) for v in args.mem_batches.split(",")]:
        xb, yb = torch.rand(b, 1, args.img, args.img, device=device), torch.randint(0, 10, (b,), device=device)
        ann_mib = saved_bytes(lambda xb=xb, yb=yb: F.cross_entropy(ann(xb), yb), ann) / MiB
        for T in Ts:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            with snn.differentiable(train):
                n = saved_bytes(lambda T=T, xb=xb, yb=yb: loss_fn(snn(xb, T, 1), yb, cfg_ce), snn)
            peak = f" | {torch.cuda.max_memory_allocated() / MiB:.0f}" if device.type == "cuda" else ""
            print(f"{b:5d} | {T} | {n / MiB:9.1f} | {n / 1024 / (b * T):17.1f} | {ann_mib:.1f}{peak}")


if __name__ == "__main__":
    main()
