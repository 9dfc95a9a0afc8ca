"""ANN -> SNN: replace every source activation by an IFNeuron (threshold and v0 from the source), keep every
other layer (BN stays in eval mode: affine, applied at every step), and memoise the static prefix (the layers
before the first activation see only the image, so they run once per simulation, not once per chunk).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from snnconv.ann.base import SourceActivation
from snnconv.snn.neuron import IFNeuron, SimContext
from snnconv.snn.simulate import SpikingNetwork, StaticMemo


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


@torch.no_grad()
def _static_prefix(ann: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of leaf modules that run before the first activation in one ANN forward on `example` [1, ...]."""
    order: list[str] = []
    seen_act = []
    hooks = []
    for name, m in ann.named_modules():
        if isinstance(m, SourceActivation):
            hooks.append(m.register_forward_pre_hook(lambda *_: seen_act.append(True)))
        elif len(list(m.children())) == 0:
            hooks.append(m.register_forward_pre_hook(lambda *_, n=name: None if seen_act else order.append(n)))
    try:
        ann(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def convert(ann: nn.Module, example: torch.Tensor) -> SpikingNetwork:
    """Build the SNN from a trained ANN (not modified). example: one input [1, C, H, W] on the ANN's device."""
    ann_was_training = ann.training
    ann.eval()
    prefix = _static_prefix(ann, example)
    ann.train(ann_was_training)
    net = copy.deepcopy(ann).eval()
    ctx = SimContext()
    neurons = [n for n, m in net.named_modules() if isinstance(m, SourceActivation)]
    for name in neurons:
        _set_submodule(net, name, IFNeuron(net.get_submodule(name).neuron_spec(), ctx))
    for name in prefix:
        _set_submodule(net, name, StaticMemo(net.get_submodule(name), ctx))
    return SpikingNetwork(net, ctx).to(example.device).eval()
