"""Method registry, shaped like `snnconv.models.registry` (timm's): `register_method`, `build_method`,
`list_methods`.

A method is a `Method` subclass in a module of this package (found by `load_plugins`, so a new method is one module
plus `conf/method/<name>.yaml`) or in a module named in the environment variable `SNNCONV_PLUGINS`
(comma-separated import paths: a user's own package). `register_method(name, ConfigClass)` also stores the config
dataclass in Hydra's ConfigStore as `method/<name>_schema`, which `conf/method/<name>.yaml` lists first in its
defaults, so the dataclass is the only copy of the method's defaults and types (Hydra's "structured config
schema" mechanism).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any

from hydra.core.config_store import ConfigStore

from snnconv import SnnconvError
from snnconv.methods.base import Method, MethodConfig

_METHODS: dict[str, type[Method]] = {}
PLUGINS_ENV = "SNNCONV_PLUGINS"


def register_method(name: str, config_cls: type[MethodConfig]):
    """Class decorator: register a `Method` subclass under `name` with its config dataclass (whose `name`
    default must equal `name`). Raises ValueError on a second, different registration of the same name."""

    def deco(cls: type[Method]) -> type[Method]:
        if _METHODS.get(name, cls) is not cls:
            raise ValueError(f"method {name!r} registered twice ({_METHODS[name].__qualname__}, {cls.__qualname__})")
        if config_cls().name != name:
            raise ValueError(f"{config_cls.__name__}.name defaults to {config_cls().name!r}, expected {name!r}")
        cls.name, cls.Config = name, config_cls
        _METHODS[name] = cls
        ConfigStore.instance().store(group="method", name=f"{name}_schema", node=config_cls)
        return cls

    return deco


def load_plugins() -> None:
    """Import every module of `snnconv.methods` and those named in $SNNCONV_PLUGINS (each registers itself)."""
    import snnconv.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SnnconvError(f"{PLUGINS_ENV} names {module!r}, which cannot be imported ({exc}); fix the name or PYTHONPATH") from exc


def list_methods() -> list[str]:
    load_plugins()
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    """The registered class for `name`; SnnconvError naming the registered ones otherwise."""
    if name not in _METHODS:
        load_plugins()
    if name not in _METHODS:
        raise SnnconvError(f"method={name!r} is not a registered method; choose one of {', '.join(list_methods())}")
    return _METHODS[name]


def build_method(method_cfg: Any) -> Method:
    """The method named by `method_cfg.name`, configured (and checked) from `method_cfg`."""
    name = method_cfg["name"] if hasattr(method_cfg, "keys") else method_cfg.name
    return method_class(name)(method_cfg)
