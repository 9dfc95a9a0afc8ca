"""Accuracy at every T in the list from ONE simulation of T_max steps (cumulative mean of the output layer),
plus the ANN's accuracy and the SNN-vs-ANN agreement (share of images with the same predicted class).

Many ranks (snnconv.distributed): each rank evaluates its shard of the test set (`shard_batches`: whole
batches, each image once); the integer counts, the method's diagnostics and the spike counter's sums are added
over ranks at the end, so every rank returns the numbers one process would.

Sources whose dynamics depend on T (rts with rts_shift=per_step) are simulated once per T instead.
With a `snnconv.stats.SpikeCounter`, spikes, SOPs and the per-layer conversion error are read from the same
simulations at the same T values (hooks only; the accuracies do not change, tests/test_stats.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from snnconv import distributed
from snnconv.methods.base import Method
from snnconv.progress import progress_bar
from snnconv.snn import SpikingNetwork
from snnconv.stats import SpikeCounter


def depends_on_T(snn: SpikingNetwork) -> bool:
    return any(n.shift_per_step for n in snn.neurons().values())


def correct_per_step(logits: torch.Tensor, labels: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """logits [T, B, K] per step -> predictions of the running mean read at each T in `steps`: [len(steps), B]."""
    cum = logits.cumsum(0)
    return torch.stack([cum[t - 1].argmax(-1) for t in steps])


@torch.no_grad()
def evaluate(
    snn: SpikingNetwork,
    ann: nn.Module,
    loader,
    T_list: list[int],
    method: Method,
    device: torch.device,
    time_chunk: int,
    max_batches: int = 0,
    progress: bool = True,
    counter: SpikeCounter | None = None,
    micro_batch: int = 0,
) -> dict:
    """Returns {"ann_acc": %, "acc": {T: %}, "agreement": {T: %}, "images": n} over the loader; `counter`
    (optional) counts during the same simulations (read its `summary()` afterwards). `micro_batch` in [1, B):
    each loader batch is evaluated that many images at a time (a memory plan, `snnconv.snn.memory`; images are
    independent, so nothing changes, tests/test_memory.py). Counts stay on the device until the end. Several
    ranks: `loader` is this rank's shard; call on every rank; the numbers returned are over all ranks."""
    ann.eval()
    snn.eval()
    method.attach(snn)
    T_list = sorted(set(int(t) for t in T_list))
    groups = [[t] for t in T_list] if depends_on_T(snn) else [T_list]
    correct = torch.zeros(len(T_list), dtype=torch.long, device=device)
    agree = torch.zeros(len(T_list), dtype=torch.long, device=device)
    ann_correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    total = min(len(loader), max_batches) if max_batches else len(loader)
    counting = counter.attached(snn, ann) if counter is not None else contextlib.nullcontext()
    with counting:
        for i, (xb, yb) in enumerate(progress_bar(loader, total=total, desc="evaluate", disable=not progress, leave=False)):
            if max_batches and i >= max_batches:
                break
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            parts = zip(xb.split(micro_batch), yb.split(micro_batch)) if 0 < micro_batch < len(xb) else [(xb, yb)]
            for x, y in parts:
                ann_pred = ann(x).argmax(-1)
                ann_correct += (ann_pred == y).sum()
                preds = []
                for group in groups:
                    steps = method.sim_steps(max(group))
                    if counter is not None:
                        counter.begin(group, x.shape[0])
                    out = snn(x, steps, time_chunk, first_chunk=method.first_chunk)
                    preds.append(correct_per_step(out, y, group))
                pred = torch.cat(preds)
                correct += (pred == y).sum(1)
                agree += (pred == ann_pred).sum(1)
                n += y.numel()
    totals = torch.cat([correct, agree, ann_correct.view(1), torch.tensor([n], device=device)])
    totals = distributed.all_reduce_sum(totals).cpu()
    k = len(T_list)
    correct, agree, (ann_correct, n) = totals[:k], totals[k : 2 * k], totals[2 * k :].tolist()
    method.reduce_diagnostics()
    if counter is not None:
        counter.reduce_over_ranks()
    pct = lambda c: round(100.0 * float(c) / max(n, 1), 4)  # noqa: E731
    return {
        "ann_acc": pct(ann_correct),
        "acc": {str(t): pct(c) for t, c in zip(T_list, correct)},
        "agreement": {str(t): pct(c) for t, c in zip(T_list, agree)},
        "images": n,
    }
