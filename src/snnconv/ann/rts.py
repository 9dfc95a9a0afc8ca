"""Threshold-ReLU source (Deng & Gu ICLR 2021, "RTS"): y = clip(x, 0, theta) with a fixed theta.

SNN mapping: threshold = theta. The paper's SNN adds theta/(2T) to the current at every step from v0 = 0
(`rts_shift=per_step`; the dynamics then depend on T, so each T is simulated separately). `rts_shift=initial`
puts the same total charge theta/2 into v0 instead, which makes one simulation serve every T.
"""

from __future__ import annotations

import torch

from snnconv.ann.base import NeuronSpec, SourceActivation


class ThresholdReLU(SourceActivation):
    def __init__(self, inplace: bool = False, threshold: float = 1.0, shift: str = "initial"):
        super().__init__()
        self.theta = float(threshold)
        self.shift = shift

    def forward(self, x):
        return x.clamp(0.0, self.theta)

    def neuron_spec(self) -> NeuronSpec:
        per_step = self.shift == "per_step"
        return NeuronSpec(torch.tensor(self.theta), v0_frac=0.0 if per_step else 0.5, shift_per_step=per_step)

    def extra_repr(self):
        return f"theta={self.theta}, shift={self.shift}"
