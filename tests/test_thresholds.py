"""ReLU thresholds from the whole calibration subset (ann/relu.py): equal to numpy's percentile of all values
(per layer and per channel), independent of the calibration batch size; and every method runs with per-channel
thresholds exactly as with the equivalent weight-normalised network whose thresholds are all 1."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from nets import images, random_ann
from snnconv import SnnconvError
from snnconv.ann.relu import ReLUAct, TopValues, calibrate_thresholds
from snnconv.methods import build_method
from snnconv.snn import convert


class Elementwise(nn.Module):
    """act(x) then act(2x - 0.3): activations of one image never depend on the others in its batch."""

    def __init__(self):
        super().__init__()
        self.act1, self.act2 = ReLUAct(), ReLUAct()

    def forward(self, x):
        return self.act2(2 * self.act1(x) - 0.3)


def _data(n=37, c=3, side=5, seed=0):
    return torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))


def _numpy_reference(values: torch.Tensor, p: float, per_channel: bool) -> torch.Tensor:
    a = values.double().numpy()
    if per_channel:
        a = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
        return torch.tensor(np.percentile(a, p, axis=1)).float()
    return torch.tensor(np.percentile(a.ravel(), p)).float().reshape(())


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("p", [99.9, 99.0, 50.0, 100.0])
def test_thresholds_equal_numpy_percentile_of_all_values(granularity, p):
    x = _data()
    model = Elementwise()
    calibrate_thresholds(model, [x[:10], x[10:11], x[11:]], p, "cpu", granularity)
    a1 = torch.relu(x)
    a2 = torch.relu(2 * a1 - 0.3)
    for act, a in ((model.act1, a1), (model.act2, a2)):
        ref = _numpy_reference(a, p, granularity == "channel").clamp_min(1e-6)
        assert act.threshold.shape == ref.shape
        assert torch.equal(act.threshold, ref), (act.threshold, ref)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_thresholds_do_not_depend_on_the_batch_size(granularity):
    x = _data(n=24)
    one, whole = Elementwise(), Elementwise()
    calibrate_thresholds(one, list(x.split(1)), 99.9, "cpu", granularity)
    calibrate_thresholds(whole, [x], 99.9, "cpu", granularity, num_images=24)
    for a, b in ((one.act1, whole.act1), (one.act2, whole.act2)):
        assert torch.equal(a.threshold, b.threshold)
    # the old rule (mean of per-batch percentiles) differs between the two splits
    per_image = torch.stack([torch.quantile(torch.relu(xi).flatten(), 0.999) for xi in x.split(1)]).mean()
    assert abs(float(per_image) - float(whole.act1.threshold.max())) > 1e-3


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_vgg_thresholds_batch_1_equal_whole_subset(granularity):
    """A real network: activations of an image can differ in the last bit with the batch size (conv blocking)."""
    ann = copy.deepcopy(random_ann("vgg16", "relu"))
    x = images(16, 5)
    calibrate_thresholds(ann, list(x.split(1)), 99.9, "cpu", granularity)
    one = {n: m.threshold.clone() for n, m in ann.named_modules() if isinstance(m, ReLUAct)}
    calibrate_thresholds(ann, [x], 99.9, "cpu", granularity)
    for n, m in ann.named_modules():
        if isinstance(m, ReLUAct):
            assert m.threshold.shape == one[n].shape
            assert torch.allclose(m.threshold, one[n], rtol=1e-5, atol=1e-7), n


def test_top_values_refuses_a_wrong_count_and_keeps_only_the_tail():
    tv = TopValues(n=10_000, percentile=99.9, groups=2)
    assert tv.k == 10_000 - int(0.999 * 9_999)  # 11 values per group instead of 10,000
    tv.add(torch.rand(2, 6_000))
    assert tv.top.shape == (2, 11)
    with pytest.raises(RuntimeError, match="announced"):
        tv.result()
    with pytest.raises(SnnconvError, match="threshold_granularity='pixel'"):
        calibrate_thresholds(Elementwise(), [_data()], 99.9, "cpu", "pixel")


# ----------------------------------------------------------------- per-channel thresholds through every method
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), ReLUAct()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), ReLUAct()
        self.pool, self.flat = nn.AvgPool2d(2), nn.Flatten()
        self.fc1, self.act3, self.fc2 = nn.Linear(64, 8), ReLUAct(), nn.Linear(8, 3)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.fc2(self.act3(self.fc1(self.flat(self.pool(x)))))


def _power_of_two_thresholds(model, x):
    """Per-channel thresholds 2^round(log2(95th percentile)): different per channel, exact to divide by."""
    calibrate_thresholds(model, [x], 95.0, "cpu", "channel")
    for m in model.modules():
        if isinstance(m, ReLUAct):
            m.threshold = torch.exp2(torch.round(torch.log2(m.threshold.clamp_min(1e-3))))


@torch.no_grad()
def _normalised(model: Small) -> Small:
    """The same function with every threshold 1: each layer before an activation divides its output channel by
    theta_c, the layer after multiplies its input channel by theta_c (powers of 2, so every value is exactly
    theta_c times the original network's)."""
    b = copy.deepcopy(model)
    t1, t2, t3 = (m.threshold for m in (model.act1, model.act2, model.act3))
    b.bn1.weight /= t1
    b.bn1.bias /= t1
    b.conv2.weight *= t1.view(1, -1, 1, 1)
    b.bn2.weight /= t2
    b.bn2.bias /= t2
    b.fc1.weight *= t2.repeat_interleave(16).view(1, -1)  # flatten of [4, 4, 4]: channel-major features
    b.fc1.weight /= t3.view(-1, 1)
    b.fc1.bias /= t3
    b.fc2.weight *= t3.view(1, -1)
    for m in (b.act1, b.act2, b.act3):
        m.threshold = torch.ones_like(m.threshold)
    return b


def _method(name):
    return build_method(SimpleNamespace(name=name, alpha=0.5, iterations=2, update="residual", rho=4, passes=1,
                                        eps=0.001))


@pytest.mark.parametrize("method", ["baseline", "offset_spike", "ftbc", "ftbc_offset_spike"])
def test_every_method_runs_per_channel_thresholds_as_the_normalised_network(method):
    torch.manual_seed(0)
    a = Small().eval()
    with torch.no_grad():
        for bn in (a.bn1, a.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    _power_of_two_thresholds(a, x)
    assert all(len(set(m.threshold.tolist())) > 1 for m in (a.act1, a.act2, a.act3))  # really per channel
    b = _normalised(a)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    T, batches = 8, [x[:8], x[8:]]
    outs = []
    for ann in (a, b):
        snn = convert(ann, x[:1])
        m = _method(method)
        m.calibrate(snn, ann, batches, T, 1)
        m.attach(snn)
        with torch.no_grad():
            outs.append(snn(x, m.sim_steps(T), 1, first_chunk=m.first_chunk))
        assert snn.neurons()["act1"].threshold.shape == (4,)
    assert torch.equal(outs[0], outs[1]), (outs[0] - outs[1]).abs().max()
    assert outs[0].std() > 0 and not torch.equal(outs[0][0], outs[0][-1])  # the layers fire, outputs change with t
