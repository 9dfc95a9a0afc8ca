"""Threshold-ReLU source (Deng & Gu ICLR 2021, "RTS"): y = clip(x, 0, theta) with a fixed theta.

SNN mapping: threshold = theta. The paper's SNN adds theta/(2T) to the current at every step from v0 = 0
(`rts_shift=per_step`; the dynamics then depend on T, so each T is simulated separately). `rts_shift=initial`
puts the same total charge theta/2 into v0 instead, which makes one simulation serve every T.
"""

from __future__ import annotations

import functools

import torch

from snnconv.ann.base import NeuronSpec, SourceActivation
from snnconv.ann.registry import register_source


@register_source("rts")
class ThresholdReLU(SourceActivation):
    snn_only_fields = ("rts_shift",)

    def __init__(self, inplace: bool = False, threshold: float = 1.0, shift: str = "initial"):
        super().__init__()
        self.threshold = float(threshold)
        self.shift = shift

    @classmethod
    def from_config(cls, ann_cfg):
        return functools.partial(cls, threshold=ann_cfg.threshold, shift=ann_cfg.rts_shift)

    def forward(self, x):
        return x.clamp(0.0, self.threshold)

    def neuron_spec(self) -> NeuronSpec:
        per_step = self.shift == "per_step"
        return NeuronSpec(torch.tensor(self.threshold), v0_frac=0.0 if per_step else 0.5, shift_per_step=per_step)

    def extra_repr(self):
        return f"threshold={self.threshold}, shift={self.shift}"
