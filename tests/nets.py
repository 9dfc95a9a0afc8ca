"""Small random networks with non-trivial firing for the tests: VGG16 / ResNet-20 at reduced width, eval mode,
randomised BN statistics, thresholds = 95th percentile of each layer's ANN input (qcfs) or 99th (relu)."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from snnconv.ann.qcfs import QCFS
from snnconv.ann.relu import ReLUAct, calibrate_thresholds
from snnconv.ann.rts import ThresholdReLU
from snnconv.models import create_model

WIDTH = {"vgg16": 0.125, "resnet20": 0.5}


def images(n, seed):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def act_for(source):
    if source == "qcfs":
        return functools.partial(QCFS, L=4, init_threshold=1.0)
    if source == "relu":
        return ReLUAct
    return functools.partial(ThresholdReLU, threshold=1.0, shift=source.split(":")[1])


@functools.cache
def random_ann(arch: str, source: str = "qcfs") -> nn.Module:
    torch.manual_seed(0)
    ann = create_model(
        arch, act_layer=act_for(source), num_classes=10, in_chans=1, img_size=32, width=WIDTH[arch]
    )
    ann.eval()
    with torch.no_grad():
        for m in ann.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.2)
    x = images(8, 100)
    if source == "qcfs":

        def set_threshold(mod, args):
            mod.threshold.data.fill_(float(torch.quantile(args[0].flatten(), 0.95).clamp_min(1e-2)))

        hooks = [m.register_forward_pre_hook(set_threshold) for m in ann.modules() if isinstance(m, QCFS)]
        with torch.no_grad():
            ann(x)
        for h in hooks:
            h.remove()
    elif source == "relu":
        calibrate_thresholds(ann, [x], 99.0, "cpu")
    return ann




@functools.cache
def dyadic_ann(arch: str) -> nn.Module:
    """A QCFS network whose every SNN quantity is a short binary fraction: no BN (replaced by Identity), weights and
    biases multiples of 2^-8, power-of-two thresholds, so with `dyadic_images` every sum of the simulation (any
    summation order, any chunk, any device) is exact in fp32. Ties at the threshold are then common, which makes
    comparisons between devices bit-exact checks rather than tolerance checks (tests/test_gpu.py); that the fp32
    simulation equals the fp64 one bit for bit is checked on CPU (tests/test_memory.py)."""
    torch.manual_seed(1)
    ann = create_model(
        arch, act_layer=act_for("qcfs"), num_classes=10, in_chans=1, img_size=32, width=WIDTH[arch]
    )
    for name, m in list(ann.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            parent, _, child = name.rpartition(".")
            setattr(ann.get_submodule(parent) if parent else ann, child, nn.Identity())
    ann.eval()
    with torch.no_grad():
        for m in ann.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_((m.weight * 256).round() / 256)
                if m.bias is not None:
                    m.bias.copy_((m.bias * 256).round() / 256)

        def set_threshold(mod, args):
            q = float(torch.quantile(args[0].flatten(), 0.95).clamp_min(2**-6))
            mod.threshold.fill_(2.0 ** round(torch.log2(torch.tensor(q)).item()))

        hooks = [m.register_forward_pre_hook(set_threshold) for m in ann.modules() if isinstance(m, QCFS)]
        ann(dyadic_images(8, 100))
        for h in hooks:
            h.remove()
    return ann


def dyadic_images(n, seed):
    """Images in [-1, 1] on a 1/16 grid."""
    return torch.randint(-16, 17, (n, 1, 32, 32), generator=torch.Generator().manual_seed(seed)).float() / 16
