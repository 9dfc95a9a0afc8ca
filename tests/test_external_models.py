"""`arch=torchvision` / `arch=timm`: torchvision resnet18 and timm vgg16_bn with random weights (no download),
one input channel, every ReLU made the ANN source, convert (ann=relu per layer / per channel, ann=qcfs) and
their SNNs approach the ANN's outputs as T grows; the whole pipeline runs with arch=torchvision."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from snnconv import SnnconvError
from snnconv.ann import QCFS, ReLUAct, calibrate_thresholds
from snnconv.ann.base import SourceActivation
from snnconv.config import validate
from snnconv.models import create_model, replace_maxpool
from snnconv.models.external import replace_relus_fx
from snnconv.runner import run
from snnconv.snn import convert
from snnconv.train import load_state
from test_runner import make_cfg

X = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def _sources(model):
    return [n for n, m in model.named_modules() if isinstance(m, SourceActivation)]


@torch.no_grad()
def _prepare(model: nn.Module, source: str) -> nn.Module:
    """Average pooling, BN statistics of the images (a random network with sane activations), thresholds: ReLU
    from the images' 99.9th percentile, QCFS lambda = the 99th percentile of each activation's input."""
    replace_maxpool(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()(X)
    model.eval()
    if source == "qcfs":
        def set_lambda(mod, args):
            mod.threshold.data.fill_(float(torch.quantile(args[0].flatten()[:100_000], 0.99)))

        hooks = [m.register_forward_pre_hook(set_lambda) for m in model.modules() if isinstance(m, QCFS)]
        model(X)
        for h in hooks:
            h.remove()
    else:
        calibrate_thresholds(model, [X], 99.9, "cpu", source.split(":")[1])
    return model


def _errors(model, T_list, n=4):
    """Relative distance of the SNN's running-mean output to the ANN's logits, at each T."""
    snn = convert(model, X[:1])
    with torch.no_grad():
        ann = model(X[:n])
        out = snn(X[:n], max(T_list), 1).cumsum(0)
    return [float((out[t - 1] / t - ann).norm() / ann.norm()) for t in T_list], len(snn.neurons())


ACT = {"relu:layer": ReLUAct, "relu:channel": ReLUAct, "qcfs": functools.partial(QCFS, L=8)}


@pytest.mark.parametrize("source", list(ACT))
def test_torchvision_resnet18_converts_and_approaches_the_ann(source):
    torch.manual_seed(0)
    model = create_model("torchvision", act_layer=ACT[source], num_classes=10, in_chans=1, model_name="resnet18")
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    # every ReLU call site is its own module: stem + 2 per block; the block's second call site is relu2
    names = _sources(model)
    assert len(names) == 17 and "layer1.0.relu" in names and "layer1.0.relu2" in names
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    errors, n_spiking = _errors(_prepare(model, source), [1, 16, 64], n=2)
    assert n_spiking == 17
    assert errors[2] < errors[1] < errors[0] and errors[2] < 0.75 * errors[0], errors


def test_timm_vgg16_bn_converts_and_approaches_the_ann():
    """timm's VGG16-BN through its act_layer (its ConvMlp head, 7x7 conv, at mlp_ratio 1/32 to stay fast)."""
    torch.manual_seed(0)
    model = create_model("timm", act_layer=ReLUAct, num_classes=10, in_chans=1, model_name="vgg16_bn",
                         model_kwargs={"mlp_ratio": 1 / 32})
    assert len(_sources(model)) == 15 and not any(isinstance(m, nn.ReLU) for m in model.modules())
    with pytest.raises(SnnconvError, match=r"max_pool2d in 'features.6'"):
        convert(model.eval(), X[:1])
    errors, n_spiking = _errors(_prepare(model, "relu:channel"), [1, 16, 32], n=2)
    assert n_spiking == 15
    assert errors[2] < errors[1] < errors[0] and errors[2] < 0.75 * errors[0], errors


def test_functional_relus_become_modules_with_fx():
    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            x = torch.relu(self.a(x))
            x = nn.functional.relu(self.b(x)).relu()
            return self.act(x) + self.act(-x)

    ref = F()
    gm = replace_relus_fx(ref, ReLUAct)
    names = _sources(gm)
    assert len(names) == 5 and {"act", "act2"} <= set(names)
    x = torch.randn(3, 4)
    assert torch.equal(gm(x), ref(x))


def test_torchvision_weights_load_into_arch_torchvision(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(num_classes=10)
    ref.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = create_model("torchvision", act_layer=ReLUAct, num_classes=10, in_chans=1, model_name="resnet18")
    assert load_state(model, tmp_path / "r18.pth", "auto") == "snnconv"
    assert load_state(model, tmp_path / "r18.pth", "torchvision") == "torchvision"
    with torch.no_grad():
        assert torch.equal(model.eval()(X[:2]), ref.eval()(X[:2]))


def test_unknown_model_names_are_refused_before_any_work(tmp_path):
    for arch, name, msg in [("torchvision", "resnet19", "not a torchvision model; close: resnet"),
                            ("timm", "vgg17_bn", "not a timm model")]:
        with pytest.raises(SnnconvError, match=msg):
            validate(make_cfg(tmp_path, f"arch={arch}", f"arch.model_name={name}"))


def test_pipeline_runs_arch_torchvision_per_channel_ftbc(tmp_path: Path):
    cfg = make_cfg(tmp_path, "arch=torchvision", "arch.model_name=resnet18", "arch.maxpool=avg", "ann=relu",
                   "ann.threshold_granularity=channel", "method=ftbc", "debug=fast", "data.img_size=16")
    results = run(cfg, tmp_path / "out", progress=False)
    assert results["snn"]["spiking_layers"] == 17
    lo, mean, hi = results["ann"]["snn_thresholds"]["layer1.0.relu2"]
    assert lo <= mean <= hi and hi > lo  # per channel: [min, mean, max]
    refused = make_cfg(tmp_path, "arch=torchvision", "arch.model_name=resnet18", "ann=relu", "debug=fast",
                       "data.img_size=16")
    with pytest.raises(SnnconvError, match="arch.maxpool=avg"):
        run(refused, tmp_path / "out2", progress=False)
