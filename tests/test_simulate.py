"""Simulation: independent of `time_chunk`, equal to a naive step-by-step simulation written here, per-T
prefixes equal separate runs, the static first layer runs once, and conversion gives an eval-mode network."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from nets import images, random_ann
from snnconv.ann.base import SourceActivation
from snnconv.evaluate import evaluate
from snnconv.methods.baseline import Baseline
from snnconv.snn import IFNeuron, convert


class _StepIF(nn.Module):
    """The textbook IF neuron for the reference: one step per call, state kept between calls."""

    def __init__(self, theta: torch.Tensor, v0_frac: float):
        super().__init__()
        self.theta, self.v0_frac, self.v = theta, v0_frac, None

    def forward(self, x):
        theta = self.theta.view(-1, *([1] * (x.dim() - 2))) if self.theta.dim() else self.theta
        if self.v is None:
            self.v = torch.full_like(x, 0.0) + self.v0_frac * theta
        self.v = self.v + x
        s = (self.v >= theta).float()
        self.v = self.v - theta * s
        return theta * s


@torch.no_grad()
def naive_simulation(ann: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Replace activations by _StepIF and run the WHOLE network once per step on the static image: [T, B, K]."""
    net = copy.deepcopy(ann).eval()
    for name, m in list(net.named_modules()):
        if isinstance(m, SourceActivation):
            spec = m.neuron_spec()
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, _StepIF(spec.threshold, spec.v0_frac))
    return torch.stack([net(x) for _ in range(T)])


@pytest.mark.parametrize("arch,source", [("vgg16", "qcfs"), ("resnet20", "qcfs"), ("resnet20", "relu")])
def test_every_time_chunk_equals_the_naive_step_by_step_simulation(arch, source):
    ann = random_ann(arch, source)
    x = images(6, 7)
    T = 6
    reference = naive_simulation(ann, x, T)
    snn = convert(ann, x[:1])
    for chunk in (1, 2, 3, 4, 6):  # 1, divisors of T, a non-divisor (last chunk shorter), T
        out = snn(x, T, chunk)
        assert out.shape == (T, 6, 10)
        torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)
    assert len(snn.neurons()) > 10
    assert (reference.std(0) > 0).any()  # the output changes over time: the test is not trivially static


def test_static_first_layer_runs_once_per_simulation():
    ann = random_ann("vgg16")
    snn = convert(ann, images(1, 0))
    first_conv = next(m for m in snn.net.modules() if isinstance(m, nn.Conv2d))
    calls = []
    first_conv.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    second_conv = [m for m in snn.net.modules() if isinstance(m, nn.Conv2d)][1]
    later = []
    second_conv.register_forward_hook(lambda m, i, o: later.append(o.shape[0]))
    snn(images(3, 1), 8, 2)
    assert calls == [3]  # once, on [B, ...]
    assert later == [6, 6, 6, 6]  # later layers: 4 chunks of [2 * B, ...]
    snn(images(3, 2), 8, 8)
    assert calls == [3, 3]  # a new simulation recomputes it


def test_prefix_accuracy_equals_separate_runs():
    ann = random_ann("vgg16")  # random nets predict nearly one class; label by the SNN at T=2 so acc moves with T
    x = images(40, 3)
    snn = convert(ann, x[:1])
    with torch.no_grad():
        y = snn(x, 2, 1).sum(0).argmax(-1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    together = evaluate(snn, ann, loader, [1, 2, 3, 5, 8], Baseline(), torch.device("cpu"), 2, progress=False)
    for t in (1, 2, 3, 5, 8):
        alone = evaluate(snn, ann, loader, [t], Baseline(), torch.device("cpu"), 1, progress=False)
        assert alone["acc"][str(t)] == together["acc"][str(t)]
        assert alone["agreement"][str(t)] == together["agreement"][str(t)]
    assert together["images"] == 40
    assert len(set(together["acc"].values())) > 1  # accuracy moves with T on this net


def test_convert_gives_an_eval_network_and_leaves_the_ann_alone():
    ann = random_ann("resnet20")
    ann.train()
    before = {k: v.clone() for k, v in ann.state_dict().items()}
    snn = convert(ann, images(1, 0))
    assert not snn.training and not any(m.training for m in snn.modules())
    assert ann.training
    ann.eval()
    for k, v in ann.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(isinstance(m, SourceActivation) for m in snn.modules())
    assert isinstance(list(snn.net.modules())[-1], nn.Linear)  # the output layer stays analog
    assert all(isinstance(n, IFNeuron) for n in snn.neurons().values())


def test_neurons_reset_themselves_between_simulations():
    ann = random_ann("vgg16")
    x = images(4, 5)
    snn = convert(ann, x[:1])
    first = snn(x, 5, 1)
    snn(images(4, 6), 3, 3)  # a different simulation in between
    torch.testing.assert_close(snn(x, 5, 5), first, atol=1e-5, rtol=0)
    assert all(n.v is None for n in snn.neurons().values())
