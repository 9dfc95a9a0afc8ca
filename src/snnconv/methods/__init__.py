"""Calibration methods, one module each, registered with `register_method` (see `registry`)."""

from snnconv.methods.base import Method, MethodConfig
from snnconv.methods.registry import build_method, list_methods, load_plugins, method_class, register_method

__all__ = ["Method", "MethodConfig", "build_method", "list_methods", "load_plugins", "method_class", "register_method"]
