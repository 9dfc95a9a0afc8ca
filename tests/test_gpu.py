"""CUDA against CPU (marker `gpu`; skipped where CUDA is absent; `make gpu-check` runs them on a GPU machine).

Tolerances. On the dyadic networks (tests/nets.py: weights on a 2^-8 grid, power-of-two thresholds, no BN) every
sum of the simulation is exact in fp32, which tests/test_device.py checks on CPU (fp32 == fp64 bit for bit), so
CUDA must equal CPU BIT FOR BIT there: time-chunk invariance, streaming FTBC == the naive per-layer reference,
COS == its slow reference. cuDNN may pick FFT / Winograd convolutions, which are not exact, so those comparisons
run with cuDNN off (PyTorch's own im2col + cuBLAS GEMM, exact on these values, TF32 off). The production path
(cuDNN on, continuous random weights) is compared with a stated fp32 tolerance: outputs within 1e-4 on at least
99.9 % of [T, B, classes] entries (a spike that flips at a near-tie moves a few entries by one threshold), and
the whole pipeline per method on digits within 1 percentage point of CPU accuracy at every T.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nets import dyadic_ann, dyadic_images, images, random_ann
from snnconv.device import configure_numerics
from snnconv.methods.ftbc import FTBC
from snnconv.methods.offset_spike import OffsetSpike
from snnconv.methods.reference import naive_calibrate
from snnconv.snn import convert

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def fp32_numerics():
    configure_numerics(allow_tf32=False, deterministic=False)
    yield


def exact():
    """cuDNN off: exact convolutions on dyadic values (see the module docstring)."""
    return torch.backends.cudnn.flags(enabled=False)


def on(device, ann, x):
    ann = copy.deepcopy(ann).to(device)
    x = x.to(device)
    return ann, convert(ann, x[:1]), x


def cfg(**kw):
    base = dict(name="ftbc", alpha=0.5, iterations=2, update="residual", rho=4, passes=2, eps=0.001)
    return SimpleNamespace(**{**base, **kw})


@torch.no_grad()
@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
@pytest.mark.parametrize("net", ["dyadic", "random"])
def test_time_chunks_on_cuda_against_cpu(arch, net):
    """Dyadic nets, cuDNN off: bit for bit. Random nets, cuDNN on (the production path): within 1e-4 on at least
    99.9 % of the [T, B, classes] entries."""
    dyadic = net == "dyadic"
    x = dyadic_images(6, 7) if dyadic else images(16, 5)
    ann = dyadic_ann(arch) if dyadic else random_ann(arch)
    T = 8 if dyadic else 16
    reference = on("cpu", ann, x)[1](x, T, 1)
    _, snn, xc = on(CUDA, ann, x)
    with exact() if dyadic else contextlib.nullcontext():
        for chunk in (1, 3, T):
            out = snn(xc, T, chunk).cpu()
            if dyadic:
                assert torch.equal(out, reference), chunk
            else:
                off = ((out - reference).abs() > 1e-4).float().mean().item()
                assert off <= 1e-3, (chunk, off)


@pytest.mark.parametrize("update", ["residual", "oracle"])
def test_streaming_ftbc_on_cuda_equals_the_naive_reference_and_cpu(update):
    batches = [dyadic_images(4, 1), dyadic_images(4, 2)]
    ann_c, snn_c, _ = on("cpu", dyadic_ann("vgg16"), batches[0])
    FTBC(cfg(update=update)).calibrate(snn_c, ann_c, batches, 4, 1)
    cpu = {n: m.bias.clone() for n, m in snn_c.neurons().items()}
    ann, snn, _ = on(CUDA, dyadic_ann("vgg16"), batches[0])
    gpu_batches = [b.to(CUDA) for b in batches]
    with exact():
        diag = FTBC(cfg(update=update)).calibrate(snn, ann, gpu_batches, 4, 4)  # _summarise mixed devices once
        streamed = {n: m.bias.cpu() for n, m in snn.neurons().items()}
        ref = naive_calibrate(snn, ann, gpu_batches, 4, 1, alpha=0.5, iterations=2, update=update)
    assert diag["mean_abs_delta"] >= 0
    for n in cpu:
        assert torch.equal(streamed[n], cpu[n]), n
        assert torch.equal(ref[n].cpu(), cpu[n]), n
    assert any(b.abs().sum() > 0 for b in cpu.values())


@torch.no_grad()
def test_cos_on_cuda_equals_its_slow_reference_and_cpu():
    from test_offset_spike import network_reference

    x = dyadic_images(6, 3)
    ann_c, snn_c, _ = on("cpu", dyadic_ann("vgg16"), x)
    OffsetSpike(cfg()).attach(snn_c)
    cpu = snn_c(x, 8, 1, first_chunk=4)
    ann, snn, xc = on(CUDA, dyadic_ann("vgg16"), x)
    method = OffsetSpike(cfg())
    method.attach(snn)
    with exact():
        out = snn(xc, 8, 2, first_chunk=4).cpu()
        ref = network_reference(ann, xc, 8, 4, 2).cpu()
    assert torch.equal(out, cpu) and torch.equal(ref, cpu)
    assert method.diagnostics()["total"]["neurons"] > 0  # diagnostics summed on the device, read on the host


def test_one_pipeline_per_method_on_cuda_matches_cpu(tmp_path):
    from snnconv.runner import run
    from test_runner import SMALL, make_cfg

    base = make_cfg(tmp_path, *SMALL, "T=[1,2,4,8]", "train.epochs=3")
    trained = run(base, tmp_path / "train", progress=False)  # on CUDA (device=auto); cached for the rest
    ckpt = trained["ann"]["path"]
    for method in ("baseline", "offset_spike", "ftbc", "ftbc_offset_spike"):
        acc = {}
        for device in ("cpu", "cuda"):
            cfg_ = make_cfg(tmp_path, *SMALL, "T=[1,2,4,8]", f"method={method}", f"device={device}",
                            f"ann.checkpoint={ckpt}")
            acc[device] = run(cfg_, tmp_path / f"{method}-{device}", progress=False)
        assert acc["cuda"]["device"].startswith("cuda")
        for t, a in acc["cpu"]["snn"]["acc"].items():
            assert abs(acc["cuda"]["snn"]["acc"][t] - a) <= 1.0, (method, t)
        assert Path(tmp_path / f"{method}-cuda" / "results.json").is_file()
