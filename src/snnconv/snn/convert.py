"""ANN -> SNN: replace every source activation by an IFNeuron (threshold and v0 from the source), keep every
other layer (BN stays in eval mode: affine, applied at every step), and memoise the static prefix (the layers
before the first activation see only the image, so they run once per simulation, not once per chunk).

Before converting, one ANN forward checks that the result is the network the user meant: every source
activation runs exactly once, there is at least one, and no analog nonlinearity (functional relu, GELU, SiLU,
max-pooling, a product of two spiking signals...) acts on a spiking signal outside the sources. The check follows
data dependence through every torch function with PyTorch's own `TorchFunctionMode` (torch.overrides), which
sees functional calls in any model, including those torch.fx cannot trace; the output layer stays analog.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils._pytree
from torch.overrides import TorchFunctionMode

from snnconv import SnnconvError
from snnconv.ann.base import SourceActivation
from snnconv.snn.neuron import IFNeuron, SimContext
from snnconv.snn.simulate import SpikingNetwork, StaticMemo
from snnconv.utils import eval_mode, modules_of_type


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


# Functions that are not linear in their (spiking) input. Called on a tensor that depends on a spiking layer's
# output, outside the ANN sources, they have no IF equivalent: refused by name.
NONLINEAR = frozenset({
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "elu", "elu_", "selu",
    "selu_", "celu", "celu_", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "mish", "mish_", "softplus", "softsign", "prelu", "_prelu_kernel", "rrelu",
    "rrelu_", "threshold", "threshold_", "glu", "logsigmoid", "log_sigmoid", "softmax", "log_softmax", "clamp",
    "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "abs", "abs_", "exp", "log",
    "sqrt", "rsqrt", "pow", "square", "maximum", "minimum", "max", "min", "amax", "amin", "max_pool1d",
    "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "fractional_max_pool2d", "lp_pool2d",
    "layer_norm", "group_norm", "instance_norm", "rms_norm", "normalize",
})
# Linear in each argument but not in two spiking arguments together (gating, attention).
BILINEAR = frozenset({"mul", "mul_", "__mul__", "__rmul__", "__imul__", "matmul", "__matmul__", "__rmatmul__", "bmm",
                      "einsum", "div", "div_", "__truediv__", "__rtruediv__", "__itruediv__"})


def _tensors(obj) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


class _SpikeTaint(TorchFunctionMode):
    """Follows, through every torch function of one ANN forward, which tensors depend on an ANN source's output
    (= a spiking layer's output after conversion) and records the nonlinear calls made on them outside the
    sources, with the module that made the call. A TorchFunctionMode sees functional calls (torch.relu, F.gelu,
    Tensor.clamp) that module hooks and, in models with data-dependent control flow (timm's VGG head), torch.fx
    tracing cannot."""

    def __init__(self):
        super().__init__()
        self.tainted: set[int] = set()
        self.keep: list[torch.Tensor] = []  # holds the tainted tensors so that their ids stay unique
        self.stack: list[str] = []
        self.in_source = 0
        self.violations: list[tuple[str, str]] = []  # (module, function)
        self.untainted_nonlinear: list[tuple[str, str]] = []

    def mark(self, out) -> None:
        for t in _tensors(out):
            self.tainted.add(id(t))
            self.keep.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.in_source:
            return out
        name = getattr(func, "__name__", str(func))
        spiking = sum(id(t) in self.tainted for t in _tensors((args, kwargs)))
        where = self.stack[-1] if self.stack else "<model forward>"
        if spiking:
            if name in NONLINEAR or (name in BILINEAR and spiking >= 2):
                self.violations.append((where, name))
            self.mark(out)
        elif name in NONLINEAR and not name.startswith(("max", "min", "amax", "amin", "abs", "exp", "log", "sqrt")):
            self.untainted_nonlinear.append((where, name))
        return out


@dataclass
class Inspection:
    """What one checked ANN forward found: `prefix` = leaf modules that run before the first source activation
    (they see only the image), `calls` = forward calls per source activation, `violations` = nonlinear calls
    on spiking signals outside the sources [(module, function)], `nonlinear` = other activation calls found."""

    prefix: list[str]
    calls: dict[str, int]
    violations: list[tuple[str, str]]
    nonlinear: list[tuple[str, str]]


@torch.no_grad()
def inspect_ann(ann: nn.Module, example: torch.Tensor) -> Inspection:
    """One ANN forward on `example` [1, ...] (eval mode, restored after) with module hooks and `_SpikeTaint`."""
    mode = _SpikeTaint()
    prefix: list[str] = []
    calls: dict[str, int] = {}
    hooks = []
    for name, m in ann.named_modules():
        if isinstance(m, SourceActivation):
            def pre(_m, _a, n=name):
                calls[n] = calls.get(n, 0) + 1
                mode.in_source += 1

            def post(_m, _a, out):
                mode.in_source -= 1
                mode.mark(out)

            hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
            continue
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_pre_hook(lambda *_, n=name: None if calls else prefix.append(n)))
        if name:
            hooks.append(m.register_forward_pre_hook(lambda *_, n=name: mode.stack.append(n)))
            hooks.append(m.register_forward_hook(lambda *_: mode.stack.pop() and None))  # None: output unchanged
    try:
        with mode, eval_mode(ann):
            ann(example)
    finally:
        for h in hooks:
            h.remove()
    return Inspection(prefix, calls, mode.violations, mode.untainted_nonlinear)


def check_conversion(ann: nn.Module, found: Inspection) -> None:
    """Refuse (SnnconvError, one line naming the module) what the IF network could not compute: no source
    activation, one that never runs or runs more than once per forward (one neuron state per call site), and an
    analog nonlinearity left between spiking layers (a functional relu, GELU, SiLU, max-pooling, ...)."""
    sources = [n for n, m in ann.named_modules() if isinstance(m, SourceActivation)]
    if not sources:
        what = f" (found {_calls(found.nonlinear)})" if found.nonlinear else ""
        raise SnnconvError(
            f"the network has no spiking layer: none of its activations is an ANN source{what}; build activations "
            "with the act_layer that create_model passes (not torch.relu / nn.ReLU), or use arch=torchvision | timm"
        )
    twice = {n: c for n, c in found.calls.items() if c > 1}
    if twice:
        n, c = next(iter(twice.items()))
        raise SnnconvError(f"activation {n!r} runs {c} times per forward, but a spiking layer keeps one membrane per "
                           "call site; give every call its own activation module")
    never = [n for n in sources if found.calls.get(n, 0) == 0]
    if never:
        raise SnnconvError(f"activation {never[0]!r} never runs in the ANN forward, so it cannot become a spiking "
                           "layer; remove it from the model")
    if found.violations:
        where, fn = found.violations[0]
        if "max_pool" in fn or fn.startswith(("max", "amax")):
            raise SnnconvError(
                f"max-pooling ({fn} in {where!r}) after a spiking layer has no spiking equivalent; set arch.maxpool=avg "
                "(AvgPool2d of the same geometry; pretrained weights then need a short ann=qcfs fine-tune)"
            )
        raise SnnconvError(
            f"{fn} in {where!r} is applied to a spiking layer's output outside the ANN sources"
            + (f" (also {_calls(found.violations[1:])})" if len(found.violations) > 1 else "")
            + "; an IF network has no analog nonlinearity there: use the ann source's activation (act_layer) instead"
        )


def _calls(items: list[tuple[str, str]], n: int = 3) -> str:
    text = ", ".join(f"{fn} in {where!r}" for where, fn in items[:n])
    return text + (f" (+{len(items) - n} more)" if len(items) > n else "")


def convert(ann: nn.Module, example: torch.Tensor) -> SpikingNetwork:
    """Build the SNN from a trained ANN (not modified). example: one input [1, C, H, W] on the ANN's device.

    The ANN is checked first (`inspect_ann`, `check_conversion`): every source activation must run once per
    forward, and no nonlinear function may act on a spiking signal outside them. Raises SnnconvError otherwise."""
    found = inspect_ann(ann, example)
    check_conversion(ann, found)
    prefix = found.prefix
    net = copy.deepcopy(ann).eval()
    ctx = SimContext()
    neurons = list(modules_of_type(net, SourceActivation))
    for name in neurons:
        _set_submodule(net, name, IFNeuron(net.get_submodule(name).neuron_spec(), ctx))
    for name in prefix:
        _set_submodule(net, name, StaticMemo(net.get_submodule(name), ctx))
    return SpikingNetwork(net, ctx).to(example.device).eval()
