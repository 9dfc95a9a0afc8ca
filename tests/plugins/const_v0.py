"""An example method that exists in the tests only: every neuron starts from a constant fraction of its threshold.

It shows that a method is one module plus one YAML file: nothing else in the project names it. Imported through
$SNNCONV_PLUGINS=plugins.const_v0 (tests/ is on sys.path), its YAML lives in a folder added by hydra.searchpath.
"""

from __future__ import annotations

from dataclasses import dataclass

from snnconv.methods import Method, MethodConfig, register_method
from snnconv.snn import Controller


@dataclass
class ConstV0Config(MethodConfig):
    name: str = "const_v0"
    v0: float = 0.5  # initial membrane potential, units of theta

    def check(self) -> None:
        self.require(0 <= self.v0 < 1, f"method.v0={self.v0} must be in [0, 1) (units of theta)")


class ConstV0Controller(Controller):
    def __init__(self, frac: float):
        self.frac = frac

    def initial_potential(self, neuron, inputs):
        theta = neuron.threshold_view(inputs.dim() - 1)
        return (self.frac * theta).expand_as(inputs[0]).to(inputs.dtype)


@register_method("const_v0", ConstV0Config)
class ConstV0(Method):
    def attach(self, snn) -> None:
        self.neurons = len(snn.neurons())
        for neuron in snn.neurons().values():
            neuron.controllers = (ConstV0Controller(self.cfg.v0),)

    def diagnostics(self) -> dict:
        return {"v0_frac": self.cfg.v0, "layers": getattr(self, "neurons", 0)}
