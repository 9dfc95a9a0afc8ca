"""Model registry in the manner of timm: `@register_model` on a small entry point, `create_model(name, ...)`.

Every entry point takes `act_layer` (a zero-argument-capable factory for the ANN source's activation),
`num_classes`, `in_chans`, `img_size`, `width` and returns an nn.Module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    return _MODELS[name](**kwargs)
