"""What every ANN source's activation exposes to the converter, the trainer and the runner.

An ANN source is an activation module (a `SourceActivation` subclass registered with
`snnconv.ann.registry.register_source`) plus the rule mapping it to an IF neuron: threshold theta (absolute units,
scalar or per channel; named `threshold` everywhere), initial membrane potential v0 = v0_frac * theta, and whether
a charge of theta/(2T) is added at every step (RTS's SNN-side shift, which makes the dynamics depend on T).

Source-specific behaviour lives on the class, with no-op defaults:
- `from_config(ann_cfg)`: the activation factory for `create_model(act_layer=...)`;
- `calibrate(model, calib_loader, ann_cfg, device)`: set SNN thresholds from the calibration subset of the
  training split (ReLU percentiles);
- `trainable_thresholds()`: parameters the optimizer treats as thresholds (QCFS's lambda);
- `snn_only_fields`: `ann.*` keys that do not change the trained weights (left out of the checkpoint cache key);
- `optional_state`: state-dict entries a checkpoint may lack (set after loading, e.g. ReLU thresholds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn


@dataclass
class NeuronSpec:
    threshold: torch.Tensor  # [] or [C], absolute units
    v0_frac: float = 0.5  # v(0) = v0_frac * theta
    shift_per_step: bool = False  # add theta / (2 T) to the current at every step


class SourceActivation(nn.Module):
    """Base class of the ANN activations. `inplace` is accepted (and ignored) for timm's `act_layer(inplace=True)`."""

    source_name: ClassVar[str] = ""  # set by register_source
    snn_only_fields: ClassVar[tuple[str, ...]] = ()
    optional_state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, inplace: bool = False):
        super().__init__()

    @classmethod
    def from_config(cls, ann_cfg: Any) -> Callable[..., nn.Module]:
        """The activation factory for this source's `ann` config (default: the class itself)."""
        return cls

    @classmethod
    def calibrate(cls, model: nn.Module, calib_loader: Iterable, ann_cfg: Any, device) -> dict | None:
        """Set data-dependent SNN parameters from the calibration subset (`calib_loader` yields (images
        [B, C, H, W], labels) and has `.dataset`); returns what results.json records under `ann` (None: nothing
        to calibrate, the default)."""
        return None

    def trainable_thresholds(self) -> list[nn.Parameter]:
        """Threshold parameters trained with the ANN (for their own optimizer group)."""
        return []

    def neuron_spec(self) -> NeuronSpec:  # pragma: no cover - abstract
        raise NotImplementedError
