"""Plain conversion: nothing to calibrate, latency = T."""

from dataclasses import dataclass

from snnconv.methods.base import Method, MethodConfig
from snnconv.methods.registry import register_method


@dataclass
class BaselineConfig(MethodConfig):
    name: str = "baseline"


@register_method("baseline", BaselineConfig)
class Baseline(Method):
    pass
