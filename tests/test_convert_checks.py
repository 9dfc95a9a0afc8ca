"""Conversion checks its own result (snn/convert.py): no spiking layer, an activation that never runs or runs
twice, a functional or analog nonlinearity on a spiking signal, max-pooling after a spiking layer (and
`arch.maxpool=avg`, which replaces it) are refused in one line naming the module; what is fine converts."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snnconv import SnnconvError
from snnconv.ann import QCFS
from snnconv.models import replace_maxpool
from snnconv.snn import convert

act = functools.partial(QCFS, L=4, init_threshold=1.0)
X = torch.rand(1, 1, 8, 8)


class Net(nn.Module):
    """conv -> act -> conv -> `mid` -> act -> pool -> fc, with `mid` a callable under test."""

    def __init__(self, mid=None, pool=None, first_act=True):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(1, 4, 3, padding=1), act() if first_act else nn.Identity()
        self.conv2, self.act2 = nn.Conv2d(4, 4, 3, padding=1), act()
        self.block = nn.Sequential(nn.Identity())
        self.mid = mid
        self.pool = pool or nn.AvgPool2d(2)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        x = self.conv2(self.act1(self.conv1(x)))
        if self.mid is not None:
            x = self.block(self.mid(x) if isinstance(self.mid, nn.Module) else self.mid(x))
        return self.fc(self.pool(self.act2(x)).flatten(1))


def refused(model, match):
    with pytest.raises(SnnconvError, match=match) as info:
        convert(model.eval(), X)
    assert "\n" not in str(info.value)


def test_a_clean_network_converts():
    assert len(convert(Net().eval(), X).neurons()) == 2


@pytest.mark.parametrize("fn,name", [(torch.relu, "relu"), (F.relu, "relu"), (F.gelu, "gelu"), (F.silu, "silu"),
                                     (lambda x: x.clamp(0, 1), "clamp"), (torch.sigmoid, "sigmoid")])
def test_functional_nonlinearity_between_spiking_layers_is_refused(fn, name):
    refused(Net(mid=fn), rf"{name} in '<model forward>' is applied to a spiking layer's output")


@pytest.mark.parametrize("module,name", [(nn.GELU(), "gelu"), (nn.SiLU(), "silu"), (nn.ReLU(), "relu")])
def test_analog_activation_module_between_spiking_layers_is_refused_naming_it(module, name):
    refused(Net(mid=module), rf"{name} in 'mid' is applied")


def test_a_network_without_spiking_layer_is_refused():
    class Functional(nn.Module):  # what the register_model user wrote
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(144, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    refused(Functional(), r"no spiking layer: .*found relu in '<model forward>'")


def test_max_pooling_after_a_spiking_layer_is_refused_and_avg_replaces_it():
    model = Net(pool=nn.MaxPool2d(2))
    refused(model, r"max-pooling \(max_pool2d in 'pool'\) after a spiking layer .* arch.maxpool=avg")
    assert replace_maxpool(model) == 1
    assert isinstance(model.pool, nn.AvgPool2d) and model.pool.kernel_size == 2 and model.pool.stride == 2
    convert(model.eval(), X)
    functional = Net(mid=lambda x: F.max_pool2d(x, 3, 1, 1))
    refused(functional, r"max-pooling \(max_pool2d in '<model forward>'\)")


def test_max_pooling_on_the_image_is_fine():
    class Stem(Net):
        def forward(self, x):
            return super().forward(F.max_pool2d(x, 3, 1, 1))

    assert len(convert(Stem().eval(), X).neurons()) == 2


def test_same_geometry_replacement():
    pool = nn.Sequential(nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    replace_maxpool(pool)
    a = pool[0]
    assert (a.kernel_size, a.stride, a.padding, a.ceil_mode) == (3, 2, 1, True)
    with pytest.raises(SnnconvError, match="dilated"):
        replace_maxpool(nn.Sequential(nn.MaxPool2d(3, dilation=2)))


def test_an_activation_called_twice_or_never_is_refused():
    class Twice(Net):
        def forward(self, x):
            x = self.act1(self.conv2(self.act1(self.conv1(x))))
            return self.fc(self.pool(x).flatten(1))

    refused(Twice(), r"activation 'act1' runs 2 times per forward")

    class Never(Net):
        def forward(self, x):
            x = self.conv2(self.act1(self.conv1(x)))
            return self.fc(self.pool(x).flatten(1))

    refused(Never(), r"activation 'act2' never runs")


def test_a_product_of_two_spiking_signals_is_refused_but_scaling_is_fine():
    refused(Net(mid=lambda x: x * x), r"mul in '<model forward>'")
    convert(Net(mid=lambda x: 0.5 * x + 1.0).eval(), X)
