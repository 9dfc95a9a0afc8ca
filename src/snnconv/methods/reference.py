"""Slow references the tests and `scripts/bench_calibration.py` compare the fast paths against.

`naive_calibrate`: FTBC with the released code's cost structure (one ANN forward and one full T-step SNN forward per
layer and batch), using the same update rule (`FTBCController.step`) on each layer's recorded input sequence.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from snnconv.methods.ftbc import (
    FTBCController,
    ann_targets,
    check_T_independent,
    clear_biases,
    init_bias,
    source_activations,
)
from snnconv.snn import SpikingNetwork
from snnconv.snn.neuron import IFNeuron
from snnconv.utils import capture_outputs, eval_mode


@torch.no_grad()
def naive_calibrate(
    snn: SpikingNetwork,
    ann: nn.Module,
    batches: Iterable[torch.Tensor],
    T_max: int,
    time_chunk: int,
    alpha: float,
    iterations: int = 1,
    update: str = "residual",
) -> dict[str, torch.Tensor]:
    """The references' cost structure, as a slow reference: for each batch and each layer l in order, one full ANN
    forward (hook on l) and one full T_max-step SNN forward with all current biases (hook on l's input), then l is
    calibrated locally over t with the same rule. Sets the biases on `snn` and returns {name: bias [T_max, C]}.
    Controllers are removed from every neuron (the SNN forwards run without them)."""
    FTBCController(alpha, update, T_max)  # validates `update`
    batches = list(batches)
    neurons = snn.neurons()
    check_T_independent(neurons)
    acts = source_activations(ann, list(neurons))
    for neuron in neurons.values():
        neuron.controllers = ()
    clear_biases(neurons)
    with eval_mode(ann, snn):
        for _ in range(iterations):
            for x in batches:
                for name, neuron in neurons.items():
                    target = ann_targets(ann, {name: acts[name]}, x, full=update == "oracle")[name]
                    if neuron.bias.numel() == 0:
                        init_bias(neuron, T_max, target)
                    seq = input_sequence(snn, neuron, x, T_max, time_chunk)
                    ctrl = FTBCController(alpha, update, T_max)
                    ctrl.target = target
                    theta = neuron.threshold_view(seq.dim() - 1)
                    v = neuron.initial_potential(seq)
                    for t in range(T_max):
                        s, m, _ = neuron.step(v, seq[t], t, theta)
                        m, s, v = ctrl.step(neuron, t, seq[t], m, s, v)
    return {n: neuron.bias.clone() for n, neuron in neurons.items()}


def input_sequence(snn: SpikingNetwork, neuron: IFNeuron, x, T: int, time_chunk: int) -> torch.Tensor:
    """The input current of `neuron` at every step of a plain T-step simulation: [T, B, ...]."""
    chunks = capture_outputs(
        {"n": neuron}, lambda: snn(x, T, time_chunk), transform=lambda a: neuron.unfold(a).clone(), inputs=True, once=False
    )
    return torch.cat(chunks["n"])
