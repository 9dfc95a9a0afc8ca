"""Calibration methods, one file each, behind `build_method(cfg.method)`."""

from __future__ import annotations

import importlib

from snnconv.methods.base import Method

_METHODS = {
    "baseline": ("snnconv.methods.baseline", "Baseline"),
    "offset_spike": ("snnconv.methods.offset_spike", "OffsetSpike"),
    "ftbc": ("snnconv.methods.ftbc", "FTBC"),
    "ftbc_offset_spike": ("snnconv.methods.ftbc", "FTBCOffsetSpike"),
}


def build_method(method_cfg) -> Method:
    module, cls = _METHODS[method_cfg.name]
    return getattr(importlib.import_module(module), cls)(method_cfg)


__all__ = ["Method", "build_method"]
