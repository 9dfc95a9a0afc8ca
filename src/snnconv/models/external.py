"""`arch=torchvision` and `arch=timm`: a library's model (`arch.model_name`: resnet18, resnet34, vgg16_bn, ...)
with every ReLU made the chosen ANN source, input channels and classes adapted.

Built by the libraries' own factories (`torchvision.models.get_model`, `timm.create_model`), so their published
weights come through their own caches with `arch.pretrained=true` (a download when online, nothing otherwise).
ReLUs become ANN-source modules:
- timm: through the model's own `act_layer` argument (one module per activation slot);
- torchvision (no such argument; resnets call one `self.relu` twice per block): with torch.fx, every ReLU call
  site, module (`nn.ReLU`) or functional (`torch.relu`, `F.relu`, `Tensor.relu`), becomes its own module; the
  k-th call of a module `relu` is named `relu` (k = 1) or `relu{k}`. The result is a `torch.fx.GraphModule` whose
  parameter names are torchvision's (their checkpoints load unchanged, `ann.checkpoint_format=torchvision`).
Input channels: a new first conv (pretrained: timm's `adapt_input_conv` sums / repeats the RGB kernels).
Classes: torchvision's last Linear is replaced when `num_classes` differs from the pretrained 1000 (timm does
this itself). `replace_maxpool` (`arch.maxpool=avg`) swaps every nn.MaxPool2d for an nn.AvgPool2d of the same
kernel, stride, padding and ceil_mode: max-pooling after a spiking layer has no spiking equivalent.
"""

from __future__ import annotations

import difflib
import functools

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from snnconv import SnnconvError
from snnconv.models.registry import register_model

_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_}
_RELU_METHODS = {"relu", "relu_"}


def replace_maxpool(model: nn.Module) -> int:
    """Replace every nn.MaxPool2d in `model` by AvgPool2d(kernel, stride, padding, ceil_mode); returns how many.
    Raises SnnconvError for a dilated max-pool (average pooling has no dilation)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
    for name, m in found:
        if m.dilation not in (1, (1, 1)):
            raise SnnconvError(f"max-pool {name!r} is dilated ({m.dilation}); arch.maxpool=avg cannot replace it")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                nn.AvgPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode))
    return len(found)


def replace_relus_fx(model: nn.Module, act_layer) -> torch.fx.GraphModule:
    """Trace `model` with torch.fx and give every ReLU call site its own `act_layer()` module (see the module
    docstring for the names). Raises SnnconvError when the model cannot be traced."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        raise SnnconvError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}), so its ReLUs cannot be replaced; "
            "use arch=timm (act_layer) or a registered model"
        ) from exc
    used: dict[str, int] = {}
    relu_modules = {n for n, m in gm.named_modules() if isinstance(m, nn.ReLU)}  # before any is replaced
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in relu_modules:
            base = node.target
        elif node.op == "call_function" and node.target in _RELU_FUNCTIONS:
            base = f"{node.name}"
        elif node.op == "call_method" and node.target in _RELU_METHODS:
            base = f"{node.name}"
        else:
            continue
        used[base] = used.get(base, 0) + 1
        name = base if used[base] == 1 else f"{base}{used[base]}"
        while name != base and _has(gm, name):
            name += "_"
        _set(gm, name, act_layer())
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _has(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
        return True
    except AttributeError:
        return False


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _adapt_first_conv(model: nn.Module, in_chans: int, pretrained: bool) -> None:
    from timm.models import adapt_input_conv

    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    if pretrained:
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    _set(model, name, new)


def _adapt_classes(model: nn.Module, num_classes: int) -> None:
    name, fc = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name, fc = n, m
    if fc is None:
        raise SnnconvError(f"{type(model).__name__} has no Linear classifier to resize to {num_classes} classes")
    if fc.out_features != num_classes:
        _set(model, name, nn.Linear(fc.in_features, num_classes))


def _check_name(library: str, model_name: str, names) -> None:
    if not model_name:
        raise SnnconvError(f"arch={library} needs arch.model_name, e.g. arch.model_name=resnet18")
    if model_name not in names:
        close = difflib.get_close_matches(model_name, sorted(names), n=5)
        raise SnnconvError(f"arch.model_name={model_name!r} is not a {library} model" +
                           (f"; close: {', '.join(close)}" if close else ""))


@functools.cache
def _model_names(library: str) -> frozenset[str]:
    if library == "torchvision":
        import torchvision

        return frozenset(torchvision.models.list_models(module=torchvision.models))
    import timm

    return frozenset(timm.list_models())


def check_model_name(library: str, model_name: str) -> None:
    """Refuse (SnnconvError) a missing or unknown model name before any work starts."""
    _check_name(library, model_name.split(".")[0] if library == "timm" else model_name, _model_names(library))


@register_model
def torchvision(act_layer, num_classes=10, in_chans=3, model_name="", pretrained=False, **_):
    """A torchvision classification model with its ReLUs made `act_layer` modules (torch.fx, see above)."""
    import torchvision as tv

    check_model_name("torchvision", model_name)
    if pretrained:
        model = tv.models.get_model(model_name, weights="DEFAULT")
        _adapt_classes(model, num_classes)
    else:
        model = tv.models.get_model(model_name, weights=None, num_classes=num_classes)
    _adapt_first_conv(model, in_chans, pretrained)
    return replace_relus_fx(model, act_layer)


@register_model
def timm(act_layer, num_classes=10, in_chans=3, model_name="", pretrained=False, model_kwargs=None, **_):
    """A timm model built with `act_layer` as its activation (timm adapts in_chans and num_classes itself);
    model_kwargs: more keyword arguments for the model class (e.g. VGG's mlp_ratio)."""
    import timm as tm

    check_model_name("timm", model_name)
    try:
        model = tm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                                act_layer=act_layer, **(model_kwargs or {}))
    except TypeError as exc:
        if "act_layer" not in str(exc):
            raise
        raise SnnconvError(f"timm model {model_name!r} takes no act_layer argument; use arch=torchvision or a "
                           "registered model") from exc
    left = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if left:
        raise SnnconvError(f"timm model {model_name!r} keeps nn.ReLU modules ({left[0]!r}) despite act_layer")
    return model


__all__ = ["check_model_name", "replace_maxpool", "replace_relus_fx"]
