"""ANN sources: the activation a model is trained with, and how it maps to an IF neuron."""

from __future__ import annotations

import functools

from snnconv.ann.base import NeuronSpec, SourceActivation
from snnconv.ann.qcfs import QCFS
from snnconv.ann.relu import ReLUAct, calibrate_thresholds
from snnconv.ann.rts import ThresholdReLU

__all__ = ["NeuronSpec", "SourceActivation", "QCFS", "ReLUAct", "ThresholdReLU", "calibrate_thresholds", "act_layer"]


def act_layer(ann_cfg):
    """The activation factory for `create_model(act_layer=...)` from the `ann` config group."""
    if ann_cfg.name == "qcfs":
        return functools.partial(QCFS, L=ann_cfg.L, init_threshold=ann_cfg.init_threshold)
    if ann_cfg.name == "relu":
        return ReLUAct
    if ann_cfg.name == "rts":
        return functools.partial(ThresholdReLU, threshold=ann_cfg.threshold, shift=ann_cfg.rts_shift)
    raise ValueError(f"unknown ANN source {ann_cfg.name!r}")
