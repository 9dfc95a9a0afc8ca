"""Plain ReLU source. SNN threshold = a percentile (99.9, 99.99, or 100 = max) of the activations on the
calibration images from the training split, per layer or per output channel (`ann.threshold_granularity`);
v0 = theta / 2.

The percentile is exact over the WHOLE calibration subset (numpy's default linear interpolation between order
statistics), not a mean of per-batch percentiles (SpikingJelly's VoltageHook averages per-batch values with a
momentum, which makes the threshold depend on the batch size): `TopValues` streams the batches and keeps only
the values above the percentile's rank. Per-channel thresholds are what SpikingJelly's channel-wise
normalisation (and Rueckauer et al. 2017's robust normalisation per channel) uses; the IF neuron takes a [C]
threshold as is (`snnconv.snn.neuron.per_channel`).

Many ranks (snnconv.distributed): each rank streams its share of the calibration batches (whole batches of the
one-process loader, `distributed.shard_batches`, so every activation value is computed bit for bit as one
process computes it: a Linear layer's rows can round differently in another batch size), the value counts are
summed over ranks, and `TopValues.merge_ranks` keeps the k largest of all ranks' kept values (the k largest of a
union are among the k largest of each part): every rank sets the thresholds one process would, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn

from snnconv import SnnconvError, distributed
from snnconv.ann.base import NeuronSpec, SourceActivation
from snnconv.ann.registry import register_source
from snnconv.utils import capture_outputs, eval_mode, modules_of_type


@register_source("relu")
class ReLUAct(SourceActivation):
    snn_only_fields = ("percentile", "threshold_granularity")
    optional_state = ("threshold",)

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float("nan")))  # set by calibrate()

    def forward(self, x):
        return torch.relu(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "threshold"
        if key in state_dict:  # [] per layer or [C] per channel, set by calibration: adopt the saved shape
            self.threshold = torch.empty_like(state_dict[key], device=self.threshold.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def neuron_spec(self) -> NeuronSpec:
        if torch.isnan(self.threshold).any():
            raise SnnconvError("ReLU thresholds are not set: call calibrate_thresholds() before converting")
        return NeuronSpec(threshold=self.threshold.clone(), v0_frac=0.5)

    @classmethod
    def calibrate(cls, model, calib_loader, ann_cfg, device) -> dict:
        """Thresholds from the calibration subset (`calib_loader` yields (images, labels); several ranks: this
        rank's whole batches, `distributed.shard_batches`); results.json keeps them under ann.snn_thresholds (per
        channel: [min, mean, max] over the channels)."""
        thresholds = calibrate_thresholds(
            model, (x for x, _ in calib_loader), ann_cfg.percentile, device, ann_cfg.threshold_granularity,
            num_images=len(calib_loader.sampler),  # this rank's images (the whole subset in one process)
        )
        return {"snn_thresholds": thresholds}


def percentile_rank(n: int, percentile: float) -> tuple[int, float]:
    """numpy's default ("linear") percentile of n sorted values v[0] <= ... <= v[n-1]: h = (n-1) p/100,
    result v[lo] + (h - lo) (v[lo+1] - v[lo]) with lo = floor(h). Returns (lo, h - lo)."""
    h = (percentile / 100.0) * (n - 1)
    lo = min(int(math.floor(h)), n - 1)
    return lo, h - lo


def _lerp(a: float, b: float, g: float) -> float:
    """numpy's `_lerp` (numpy/lib/_function_base_impl.py), so the result equals np.percentile's to the bit."""
    diff = b - a
    return b - diff * (1 - g) if g >= 0.5 else a + diff * g


class TopValues:
    """The exact `percentile` of every group's values streamed in batches, for groups of n values each.

    Keeps only each group's k = n - lo largest values seen so far (lo from `percentile_rank`): the two order
    statistics the percentile needs are the smallest two of the final top k. Memory: groups x (k + one batch's
    values), k ~ n (1 - p/100) + 1; for p = 99.9 that is 0.1 % of the values. The result does not depend on how
    the values are split into batches. groups: 1 (per layer) or C (per channel).
    """

    def __init__(self, n: int, percentile: float, groups: int):
        if n < 1:
            raise ValueError("no values")
        self.n, self.groups = n, groups
        self.lo, self.gamma = percentile_rank(n, percentile)
        self.k = n - self.lo
        self.seen = 0
        self.top: torch.Tensor | None = None  # [groups, <= k], descending

    def add(self, values: torch.Tensor) -> None:
        """values: [groups, m]."""
        self.seen += values.shape[1]
        if self.seen > self.n:
            raise RuntimeError(f"more values ({self.seen}) than announced ({self.n})")
        merged = values if self.top is None else torch.cat([self.top, values], dim=1)
        k = min(self.k, merged.shape[1])
        self.top = merged.topk(k, dim=1, largest=True, sorted=True).values

    def merge_ranks(self) -> None:
        """Several ranks, each having streamed its own values (`n` counts all ranks' values; call on every rank):
        keep the k largest of every rank's kept values, on every rank. One process: nothing to do."""
        if not distributed.is_distributed():
            return
        merged = distributed.all_gather_cat(self.top.t().contiguous()).t()  # [groups, sum of the ranks' kept counts]
        self.top = merged.topk(min(self.k, merged.shape[1]), dim=1, largest=True, sorted=True).values
        self.seen = int(distributed.all_reduce_sum(torch.tensor([self.seen])).item())

    def result(self) -> torch.Tensor:
        """[groups] float64: the percentile of each group."""
        if self.seen != self.n:
            raise RuntimeError(f"saw {self.seen} values per group, announced {self.n}")
        top = self.top.double().cpu()
        lo_vals = top[:, self.k - 1]  # ascending index lo = the k-th largest
        hi_vals = top[:, self.k - 2] if self.k >= 2 else lo_vals
        return torch.tensor([_lerp(float(a), float(b), self.gamma) for a, b in zip(lo_vals, hi_vals)],
                            dtype=torch.float64)


def _grouped(out: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """[B, C, ...] -> [C, B * prod(...)] (per channel: channel dim 1, a Linear's features) or [1, numel]."""
    x = out.detach().float()
    if not per_channel:
        return x.reshape(1, -1)
    return x.transpose(0, 1).reshape(x.shape[1], -1)


@torch.no_grad()
def calibrate_thresholds(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    percentile: float,
    device,
    granularity: str = "layer",
    num_images: int | None = None,
) -> dict[str, float | list[float]]:
    """Set every ReLUAct's `threshold` to the exact `percentile` (numpy's linear interpolation; 100 = max) of
    its activations over ALL calibration images: one value per layer ([] buffer) or, with granularity="channel",
    one per output channel ([C] buffer; a Linear layer's features are its channels). Thresholds are floored at
    1e-6 (a never-active layer or channel).

    batches: images [B, C, H, W]; when num_images (their total) is not given, they are gathered in a list first,
    since the exact selection must know each group's value count up front. Several ranks (call on every rank):
    `batches` and `num_images` are this rank's share (`distributed.shard_batches`; a rank may have none).
    Result: {name: theta} (per channel: [min, mean, max] over channels). Memory: see TopValues (per layer and channel, (1 - p/100) of the values).
    Raises SnnconvError for an unknown granularity or no images.
    """
    if granularity not in ("layer", "channel"):
        raise SnnconvError(f"ann.threshold_granularity={granularity!r} is not one of layer, channel")
    if num_images is None:
        batches = list(batches)
        num_images = sum(int(x.shape[0]) for x in batches)
    num_images = sum(distributed.gather_objects(int(num_images)))  # over all ranks
    if num_images < 1:
        raise SnnconvError("ReLU thresholds need calibration images; raise data.calib_size")
    per_channel = granularity == "channel"
    acts = modules_of_type(model, ReLUAct)
    stats: dict[str, TopValues] = {}

    def add(name: str, out: torch.Tensor) -> None:
        values = _grouped(out, per_channel)
        if name not in stats:
            per_image = values.shape[1] // out.shape[0]
            stats[name] = TopValues(per_image * num_images, percentile, values.shape[0])
        stats[name].add(values)

    def forward_all():
        for x in batches:
            model(x.to(device))

    with eval_mode(model):
        capture_outputs(acts, forward_all, once=False, sink=add)
    result: dict[str, float | list[float]] = {}
    for n, m in acts.items():
        sizes = [s for s in distributed.gather_objects((stats[n].n, stats[n].groups) if n in stats else None) if s]
        if not sizes:
            raise SnnconvError(f"activation {n!r} did not run on the calibration images")
        if n not in stats:  # a rank without calibration images joins the merge with no values
            stats[n] = TopValues(sizes[0][0], percentile, sizes[0][1])
            stats[n].top = torch.empty(sizes[0][1], 0, device=device)
        stats[n].merge_ranks()
        theta = stats[n].result().clamp_min(1e-6).float()
        m.threshold = (theta if per_channel else theta.reshape(())).to(m.threshold.device)
        result[n] = (
            [round(float(theta.min()), 6), round(float(theta.mean()), 6), round(float(theta.max()), 6)]
            if per_channel else round(float(theta), 6)
        )
    return result
