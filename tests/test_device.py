"""Device handling checked on CPU: no tensor of one device meets another's (every method x ANN source x arch run
on the meta device), the dyadic networks of the bit-exact GPU tests really are exact (fp32 == fp64), and the
numerics switches are set and recorded."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from nets import dyadic_ann, dyadic_images, images, random_ann
from snnconv.device import configure_numerics, numerics_record
from snnconv.methods import build_method
from snnconv.methods.ftbc import FTBC
from snnconv.snn import convert

META_READ = ("cannot be called on meta tensors", "Cannot copy out of meta tensor")


class OneDevice(TorchFunctionMode):
    """Fails any torch call whose tensor arguments live on two devices (0-dim CPU tensors excepted: CUDA takes
    them as scalars). Meta alone misses in-place mixes (`cpu_tensor += meta_tensor` passes), CUDA does not."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in tree_flatten((args, kwargs))[0]
                   if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
        assert len(devices) <= 1, f"{getattr(func, '__name__', func)} mixes {sorted(map(str, devices))}"
        return func(*args, **kwargs)


def method_cfg(name):
    return SimpleNamespace(name=name, alpha=0.5, iterations=1, update="residual", rho=2, passes=2, eps=0.001,
                           batches=1, batch_size=2)


@pytest.mark.parametrize("method", ["baseline", "offset_spike", "ftbc", "ftbc_offset_spike"])
@pytest.mark.parametrize("arch,source", [("vgg16", "qcfs"), ("resnet20", "qcfs"), ("vgg16", "relu"),
                                         ("resnet20", "relu"), ("vgg16", "rts:initial")])
def test_no_tensor_is_built_on_another_device(arch, source, method):
    """Networks and images on the meta device: an op mixing a CPU tensor with a meta one raises "not on the
    expected device", as CPU with CUDA does. Host reads (item, .cpu) cannot run on meta and end the check there."""
    ann_cpu = random_ann(arch, source)
    snn = convert(ann_cpu, images(1, 0)).to("meta")
    ann = copy.deepcopy(ann_cpu).to("meta")
    x = torch.empty(2, 1, 32, 32, device="meta")
    m = build_method(method_cfg(method))
    reached = []
    try:
        with torch.no_grad(), OneDevice():
            m.calibrate(snn, ann, [x], 3, 1)
            reached.append("calibrated")
            m.attach(snn)
            out = snn(x, m.sim_steps(3), 2, first_chunk=m.first_chunk)
            reached.append("simulated")
            assert out.device.type == "meta" and out.shape == (3 if method in ("baseline", "ftbc") else 3, 2, 10)
    except (RuntimeError, NotImplementedError) as exc:
        assert any(s in str(exc) for s in META_READ), exc  # a host read, not a device mix
    if method in ("baseline", "offset_spike"):
        assert reached == ["calibrated", "simulated"]  # nothing to read before the output


@torch.no_grad()
@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
def test_dyadic_networks_are_exact_so_devices_must_agree_bit_for_bit(arch):
    """The premise of tests/test_gpu.py: in fp32 every sum is exact, so fp32 == fp64 whatever the order."""
    x = dyadic_images(4, 3)
    ann = dyadic_ann(arch)
    snn = convert(ann, x[:1])
    snn64 = copy.deepcopy(snn).double()
    out = snn(x, 8, 1)
    assert torch.equal(out.double(), snn64(x.double(), 8, 3))
    assert torch.equal(out, snn(x, 8, 8)) and out.std(0).max() > 0
    if arch == "vgg16":  # FTBC's biases too (channel means over 2^k positions, alpha = 1/2)
        ann64 = copy.deepcopy(ann).double()
        batches = [dyadic_images(4, 1), dyadic_images(4, 2)]
        FTBC(method_cfg("ftbc")).calibrate(snn, ann, batches, 4, 1)
        FTBC(method_cfg("ftbc")).calibrate(snn64, ann64, [b.double() for b in batches], 4, 4)
        for (n, a), b in zip(snn.neurons().items(), snn64.neurons().values()):
            assert torch.equal(a.bias.double(), b.bias.double()), n
        assert any(a.bias.abs().sum() > 0 for a in snn.neurons().values())


def test_numerics_switches_are_set_and_recorded():
    try:
        configure_numerics(allow_tf32=True, deterministic=True)
        rec = numerics_record(torch.device("cpu"))
        assert rec["allow_tf32_cudnn"] and rec["allow_tf32_matmul"] and rec["cudnn_deterministic"]
        assert rec["deterministic_algorithms"] and not rec["cudnn_benchmark"]
        configure_numerics()
        rec = numerics_record(torch.device("cpu"))
        assert not rec["allow_tf32_cudnn"] and not rec["allow_tf32_matmul"] and rec["cudnn_benchmark"]
        assert not rec["deterministic_algorithms"] and rec["peak_memory_gb"] is None and rec["device"] == "cpu"
    finally:
        configure_numerics()
