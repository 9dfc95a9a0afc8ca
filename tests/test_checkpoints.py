"""Importing the published checkpoint layouts (specs/checkpoint_layouts.md): for every layout, the reference module
tree is rebuilt here from the published code's naming (QCFS `IF.thresh`, COS / old QCFS `MyFloor.up`, SNNC's
deep-stem ResNet-34, torchvision's ResNet-34 and VGG16-BN), filled with random weights, BN statistics and
thresholds, saved, loaded through `load_state` (auto-detected and with the format named), and must give
bit-identical logits to the reference network. Plus the one-line refusals of pickled models."""

from __future__ import annotations

import argparse
import functools

import pytest
import torch
import torch.nn as nn
import torchvision

from snnconv import SnnconvError
from snnconv.ann import QCFS, ReLUAct
from snnconv.checkpoints import detect_format, remap_state_dict
from snnconv.models import create_model
from snnconv.train import load_state

L = 4


class RefQCFS(nn.Module):
    """The reference activations: QCFS `IF` (parameter `thresh`) and COS / old-QCFS `MyFloor` (parameter `up`),
    forward x/θ -> clamp(0, 1) -> floor(x L + 1/2) / L -> ·θ (Models/layer.py, modules.py)."""

    def __init__(self, naming: str):
        super().__init__()
        self.naming = naming
        setattr(self, naming, nn.Parameter(torch.tensor([8.0])))

    def forward(self, x):
        th = getattr(self, self.naming)
        x = torch.clamp(x / th, 0, 1)
        return torch.floor(x * L + 0.5) / L * th


class RefVGG16(nn.Module):
    """putshua/ANN_SNN_QCFS Models/VGG.py: layer1..5 of (conv, BN, act, Dropout) per conv + AvgPool, classifier."""

    def __init__(self, naming, num_classes=10, side=1, width=1.0):
        super().__init__()
        c_in, hidden = 3, round(4096 * width)
        for b, block in enumerate([[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3], 1):
            layers = []
            for c in block:
                c = round(c * width)
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), RefQCFS(naming), nn.Dropout(0.0)]
                c_in = c
            setattr(self, f"layer{b}", nn.Sequential(*layers, nn.AvgPool2d(2, 2)))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, hidden), RefQCFS(naming), nn.Dropout(0.0),
            nn.Linear(hidden, hidden), RefQCFS(naming), nn.Dropout(0.0), nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        for b in range(1, 6):
            x = getattr(self, f"layer{b}")(x)
        return self.classifier(x)


class RefBlock(nn.Module):
    """Models/ResNet.py BasicBlock: residual_function (conv, BN, act, conv, BN), shortcut, block activation named
    `act` (QCFS) or `relu` (COS / old QCFS)."""

    def __init__(self, c_in, c_out, stride, naming):
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), RefQCFS(naming),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        setattr(self, "act" if naming == "thresh" else "relu", RefQCFS(naming))
        self.block_act = "act" if naming == "thresh" else "relu"

    def forward(self, x):
        return getattr(self, self.block_act)(self.residual_function(x) + self.shortcut(x))


class RefResNet(nn.Module):
    """ResNet4Cifar (ResNet-20: 16/32/64) and ResNet (ResNet-34: 64..512, 3x3/1 stem, no pool)."""

    def __init__(self, depths, widths, naming, num_classes=10):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                   RefQCFS(naming))
        c_in = widths[0]
        for s, (depth, c) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(RefBlock(c_in, c, 2 if (j == 0 and s > 0) else 1, naming))
                c_in = c
            setattr(self, f"conv{s + 2}_x", nn.Sequential(*blocks))
        self.n_stages = len(depths)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        for s in range(self.n_stages):
            x = getattr(self, f"conv{s + 2}_x")(x)
        return self.fc(self.avg_pool(x).flatten(1))


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights (scaled by 1/sqrt(fan-in)), BN statistics and thresholds; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            p.normal_(0.0, (2.0 / p[0].numel()) ** 0.5, generator=g)
        elif name.endswith(("thresh", "up", "threshold")):
            p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.5)
        elif name.endswith("weight"):
            p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.8)
        else:
            p.copy_(torch.rand(p.shape, generator=g) * 0.3 - 0.1)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.rand(b.shape, generator=g) * 0.4 - 0.2)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        elif name.endswith("num_batches_tracked"):
            b.fill_(int(torch.randint(1, 1000, (), generator=g)))
    return model.eval()


def fresh(make, seed=None) -> nn.Module:
    """`make()` built on the meta device, then given (uninitialised) CPU storage: skips the default initialisers,
    which cost seconds on the 20-130 M parameter networks here. seed: fill with `randomise` (else the caller
    loads every entry)."""
    with torch.device("meta"):
        model = make()
    model = model.to_empty(device="cpu").eval()
    return randomise(model, seed) if seed is not None else model


def qcfs_act():
    return functools.partial(QCFS, L=L)


def build_ours(arch: str, act_layer, **kw) -> nn.Module:
    return create_model(arch, act_layer=act_layer, num_classes=kw.pop("num_classes", 10), in_chans=3, **kw).eval()


def ours(arch: str, act_layer, **kw) -> nn.Module:
    return fresh(lambda: build_ours(arch, act_layer, **kw))


def assert_same_logits(ref: nn.Module, ours: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert torch.equal(a, b), (a - b).abs().max()
    assert a.std() > 0  # a non-trivial network


REFERENCE = {  # arch: (reference tree, snnconv kwargs); VGG16 at width 1/4 (full width: key test below)
    "vgg16": (lambda naming: RefVGG16(naming, width=0.25), dict(img_size=32, width=0.25)),
    "resnet20": (lambda naming: RefResNet([3, 3, 3], [16, 32, 64], naming), {}),
    "resnet34": (lambda naming: RefResNet([3, 4, 6, 3], [64, 128, 256, 512], naming), dict(stem="cifar")),
}


@pytest.mark.parametrize("arch", list(REFERENCE))
@pytest.mark.parametrize("naming,fmt", [("thresh", "qcfs"), ("up", "cos")])
def test_qcfs_and_cos_layouts_load_with_identical_logits(tmp_path, arch, naming, fmt):
    make_ref, kw = REFERENCE[arch]
    ref = fresh(lambda: make_ref(naming), seed=1)
    path = tmp_path / "ref.pth"
    torch.save(ref.state_dict(), path)
    assert detect_format(ref.state_dict()) == fmt
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    given = {"qcfs": "auto", "cos": "qcfs_old" if arch == "resnet20" else "cos"}[fmt]
    model = ours(arch, qcfs_act(), **kw)
    assert load_state(model, path, given) == (fmt if given == "auto" else given)
    assert_same_logits(ref, model, x)
    mapped, _ = remap_state_dict(ref.state_dict(), fmt, model.state_dict())
    assert len(mapped) == {"vgg16": 112, "resnet20": 147, "resnet34": 251}[arch]


@pytest.mark.parametrize("num_classes,side", [(10, 1), (100, 1), (1000, 7)])
@pytest.mark.parametrize("naming", ["thresh", "up"])
def test_full_width_vgg16_reference_key_sets_and_shapes(num_classes, side, naming):
    with torch.device("meta"):
        ref = RefVGG16(naming, num_classes, side)
        model = build_ours("vgg16", qcfs_act(), num_classes=num_classes, img_size=32 * side)
    mapped, fmt = remap_state_dict(ref.state_dict(), "auto", model.state_dict())
    assert fmt == {"thresh": "qcfs", "up": "cos"}[naming] and len(mapped) == 112
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_snnc_resnet34_deep_stem_loads_with_identical_logits(tmp_path):
    """SNN_Calibration's resnet34_snn: deep stem conv1.{0,1,3,4,6}, bn1, AvgPool(3, 2, 1); ReLU network, saved
    as {'state_dict': ...} with DataParallel's `module.` prefixes."""
    ref = fresh(lambda: build_ours("resnet34", nn.ReLU, stem="deep"), seed=3)
    keys = list(ref.state_dict())
    assert [k for k in keys if k.startswith("conv1.") and k.endswith("weight")] == [
        "conv1.0.weight", "conv1.1.weight", "conv1.3.weight", "conv1.4.weight", "conv1.6.weight"]
    assert detect_format(keys) == "snnc"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "r34.pth.tar")
    model = ours("resnet34", ReLUAct, stem="deep")
    assert load_state(model, tmp_path / "r34.pth.tar", "auto") == "snnconv"  # the keys already fit
    assert isinstance(model.maxpool, nn.AvgPool2d) and model.maxpool.kernel_size == 3
    assert_same_logits(ref, model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)))


def test_torchvision_resnet34_loads_unchanged(tmp_path):
    ref = fresh(lambda: torchvision.models.resnet34(num_classes=10), seed=5)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    model = ours("resnet34", ReLUAct, stem="imagenet")
    assert load_state(model, tmp_path / "tv.pth", "torchvision") == "torchvision"
    ref.maxpool = nn.AvgPool2d(3, 2, 1)  # what snnconv's stem computes
    assert_same_logits(ref, model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("fmt", ["torchvision", "snnc"])
def test_torchvision_and_snnc_vgg16_bn_key_sets_and_shapes(fmt):
    with torch.device("meta"):
        state = torchvision.models.vgg16_bn(num_classes=1000).state_dict()
        model = build_ours("vgg16", ReLUAct, num_classes=1000, img_size=224)
    assert detect_format(state) == "torchvision"
    mapped, _ = remap_state_dict(state, fmt, model.state_dict())
    own = {k: v.shape for k, v in model.state_dict().items() if not k.endswith(".threshold")}
    assert {k: v.shape for k, v in mapped.items()} == own and len(own) == 97


@pytest.mark.slow
def test_torchvision_and_snnc_vgg16_bn_load_with_identical_logits():
    """torchvision vgg16_bn (SNNC's is the same tree with AvgPool): only the classifier indices shift. In memory
    (the state dict is 540 MB), 224 x 224 input (the classifier is fixed at 512 x 7 x 7)."""
    ref = fresh(lambda: torchvision.models.vgg16_bn(num_classes=10), seed=7)
    for i, m in enumerate(ref.features):
        if isinstance(m, nn.MaxPool2d):
            ref.features[i] = nn.AvgPool2d(2, 2)
    state = ref.state_dict()
    assert detect_format(state) == "torchvision"
    model = ours("vgg16", ReLUAct, img_size=224)
    mapped, fmt = remap_state_dict(state, "auto", model.state_dict())
    assert fmt == "torchvision" and remap_state_dict(state, "snnc", model.state_dict())[0].keys() == mapped.keys()
    model.load_state_dict(mapped, strict=False)
    assert set(model.state_dict()) - set(mapped) == {k for k in model.state_dict() if k.endswith(".threshold")}
    assert_same_logits(ref, model, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(8)))


def test_own_checkpoints_are_detected_as_snnconv():
    for arch, kw in [("vgg16", dict(img_size=32)), ("resnet20", {}), ("resnet34", dict(stem="cifar"))]:
        with torch.device("meta"):
            keys = build_ours(arch, qcfs_act(), **kw).state_dict()
        assert detect_format(keys) == "snnconv", arch
        assert remap_state_dict(keys, "auto", keys)[1] == "snnconv"


def test_wrong_layout_is_refused_naming_the_format(tmp_path):
    ref = fresh(lambda: RefResNet([3, 3, 3], [16, 32, 64], "thresh"), seed=9)
    torch.save(ref.state_dict(), tmp_path / "r20.pth")
    with pytest.raises(SnnconvError, match=r"layout torchvision\) .*missing keys conv1.weight.*checkpoint_format"):
        load_state(build_ours("resnet20", qcfs_act()), tmp_path / "r20.pth", "torchvision")
    with pytest.raises(SnnconvError, match="not one of auto, snnconv"):
        load_state(build_ours("resnet20", qcfs_act()), tmp_path / "r20.pth", "keras")


class Pickled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


def test_a_pickled_model_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(Pickled(), path)
    model = Pickled()
    with pytest.raises(SnnconvError) as info:
        load_state(model, path)
    msg = str(info.value)
    assert "\n" not in msg and "ann.trust_checkpoint=true" in msg
    saved = torch.load(path, weights_only=False)
    load_state(model, path, "auto", trust=True)
    assert torch.equal(model.fc.weight, saved.fc.weight)


def test_a_training_checkpoint_with_pickled_objects_is_refused_in_one_line(tmp_path):
    """A training script's checkpoint with an argparse.Namespace in it (common in the published repos); run.py
    prints an SnnconvError as one line and exits 2 (tests/test_runner.py)."""
    path = tmp_path / "ckpt.pth"
    model = Pickled()
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(SnnconvError) as info:
        load_state(Pickled(), path)
    assert "\n" not in str(info.value) and "ann.trust_checkpoint=true" in str(info.value)
    fresh = Pickled()
    load_state(fresh, path, trust=True)
    assert torch.equal(fresh.fc.weight, model.fc.weight)
