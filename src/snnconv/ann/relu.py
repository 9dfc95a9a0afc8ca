"""Plain ReLU source. SNN threshold per layer = a percentile (99.9, 99.99, or 100 = max) of that layer's
activations on calibration images from the training split; v0 = theta / 2.

The percentile is taken per calibration batch (exact, via kthvalue on all elements) and averaged over batches
(SpikingJelly's robust-norm style); `percentile=100` takes the max over all batches instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from snnconv import SnnconvError
from snnconv.ann.base import NeuronSpec, SourceActivation


class ReLUAct(SourceActivation):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.register_buffer("snn_threshold", torch.tensor(float("nan")))

    def forward(self, x):
        return torch.relu(x)

    def neuron_spec(self) -> NeuronSpec:
        if math.isnan(self.snn_threshold.item()):
            raise SnnconvError("ReLU thresholds are not set: call calibrate_thresholds() before converting")
        return NeuronSpec(threshold=self.snn_threshold.clone(), v0_frac=0.5)


def _percentile(x: torch.Tensor, p: float) -> torch.Tensor:
    flat = x.detach().flatten().float()
    if p >= 100:
        return flat.max()
    k = max(1, min(flat.numel(), math.ceil(flat.numel() * p / 100.0)))
    return flat.kthvalue(k).values


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, batches, percentile: float, device) -> dict[str, float]:
    """Set every ReLUAct's `snn_threshold` from images [B, C, H, W] in `batches`; returns {name: theta}."""
    acts = {n: m for n, m in model.named_modules() if isinstance(m, ReLUAct)}
    values: dict[str, list[torch.Tensor]] = {n: [] for n in acts}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: values[n].append(_percentile(out, percentile)))
        for n, m in acts.items()
    ]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    result = {}
    for n, m in acts.items():
        v = torch.stack(values[n])
        theta = v.max() if percentile >= 100 else v.mean()
        m.snn_threshold.fill_(max(float(theta), 1e-6))
        result[n] = float(m.snn_threshold)
    return result
