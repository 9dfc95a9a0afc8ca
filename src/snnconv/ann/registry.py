"""ANN-source registry, shaped like `snnconv.models.registry`: `register_source(name)` on a `SourceActivation`
subclass, `source_class(name)`, `list_sources()`, and `act_layer(ann_cfg)` for `create_model`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from snnconv import SnnconvError
from snnconv.ann.base import SourceActivation

_SOURCES: dict[str, type[SourceActivation]] = {}


def register_source(name: str):
    """Class decorator: register a SourceActivation subclass as `ann=<name>`."""

    def deco(cls: type[SourceActivation]) -> type[SourceActivation]:
        if _SOURCES.get(name, cls) is not cls:
            raise ValueError(f"ANN source {name!r} registered twice")
        cls.source_name = name
        _SOURCES[name] = cls
        return cls

    return deco


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def source_class(name: str) -> type[SourceActivation]:
    if name not in _SOURCES:
        raise SnnconvError(f"ann={name!r} is not a registered ANN source; choose one of {', '.join(list_sources())}")
    return _SOURCES[name]


def act_layer(ann_cfg: Any) -> Callable[..., nn.Module]:
    """The activation factory for `create_model(act_layer=...)` from the `ann` config group."""
    return source_class(ann_cfg.name).from_config(ann_cfg)


def snn_only_fields() -> tuple[str, ...]:
    """`ann.*` keys of any source that do not change the trained weights (sorted, for the cache key)."""
    return tuple(sorted({f for cls in _SOURCES.values() for f in cls.snn_only_fields}))
