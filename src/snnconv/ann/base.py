"""What every ANN source's activation exposes to the converter.

An ANN source is an activation module (`act_layer`) plus the rule mapping it to an IF neuron:
threshold theta (absolute units, scalar or per channel), initial membrane potential v0 = v0_frac * theta, and
whether a charge of theta/(2T) is added at every step (RTS's SNN-side shift, which makes the dynamics depend on T).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class NeuronSpec:
    threshold: torch.Tensor  # [] or [C], absolute units
    v0_frac: float = 0.5  # v(0) = v0_frac * theta
    shift_per_step: bool = False  # add theta / (2 T) to the current at every step


class SourceActivation(nn.Module):
    """Base class of the ANN activations. `inplace` is accepted (and ignored) for timm's `act_layer(inplace=True)`."""

    def __init__(self, inplace: bool = False):
        super().__init__()

    def neuron_spec(self) -> NeuronSpec:  # pragma: no cover - abstract
        raise NotImplementedError
