"""ANN sources: the activation a model is trained with, and how it maps to an IF neuron."""

from __future__ import annotations

from snnconv.ann.base import NeuronSpec, SourceActivation
from snnconv.ann.qcfs import QCFS
from snnconv.ann.registry import act_layer, list_sources, register_source, snn_only_fields, source_class
from snnconv.ann.relu import ReLUAct, calibrate_thresholds
from snnconv.ann.rts import ThresholdReLU

__all__ = [
    "NeuronSpec",
    "SourceActivation",
    "QCFS",
    "ReLUAct",
    "ThresholdReLU",
    "act_layer",
    "calibrate_thresholds",
    "list_sources",
    "register_source",
    "snn_only_fields",
    "source_class",
]
