"""FTBC biases plus COS initial-potential shifts (no published code combines them).

Calibration runs with COS active: each neuron holds two controllers, COS's (``initial_potential``: its rho-step
pre-simulation includes the biases as they are at the start of that forward) and FTBC's (``on_step``), so the biases
correct what remains after the shift (the oracle rule, if chosen, starts its oracle membrane from the COS v0).
Simulations run ``sim_steps(T_max) = max(T_max, rho)`` steps (the first rho in one chunk, for the pre-simulation),
and the biases cover all of them. At inference ``attach`` installs the plain COS controllers, whose pre-simulation
sees the final biases (so the deployed v0 is recomputed from them: an approximation, since the biases were fitted
with the v0 of the biases before each pass; more iterations shrink the difference).
attach / sim_steps / latency come from COS (latency: rho * passes + T). The config is FTBC's and COS's together
(dataclass inheritance: one copy of each default). Results: the ``ftbc`` and ``offset_spike`` sections side by side,
as the single methods write them.
"""

from __future__ import annotations

from dataclasses import dataclass

from snnconv.methods.ftbc import FTBC, FTBCConfig, FTBCController
from snnconv.methods.offset_spike import OffsetSpike, OffsetSpikeConfig
from snnconv.methods.registry import register_method
from snnconv.snn import SpikingNetwork
from snnconv.snn.neuron import Controller


@dataclass
class FTBCOffsetSpikeConfig(FTBCConfig, OffsetSpikeConfig):
    name: str = "ftbc_offset_spike"

    def check(self) -> None:
        FTBCConfig.check(self)
        OffsetSpikeConfig.check(self)


@register_method("ftbc_offset_spike", FTBCOffsetSpikeConfig)
class FTBCOffsetSpike(FTBC):
    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.cos = OffsetSpike(self.cfg)
        self.first_chunk = self.cos.first_chunk
        self._cos_controller = self.cos.controller()

    def controllers(self, ftbc: FTBCController) -> tuple[Controller, ...]:
        return (self._cos_controller, ftbc)

    def memory_needs(self, phase: str) -> tuple[int, int]:
        """COS's pre-simulation dominates in both phases; FTBC's oracle adds its two state copies."""
        return 14, FTBC.memory_needs(self, phase)[1]

    def attach(self, snn: SpikingNetwork) -> None:
        self.cos.attach(snn)

    def sim_steps(self, T_max: int) -> int:
        return self.cos.sim_steps(T_max)

    def latency(self, T: int, n_spiking: int) -> dict[str, int]:
        return self.cos.latency(T, n_spiking)

    def reduce_diagnostics(self) -> None:
        self.cos.reduce_diagnostics()

    def diagnostics(self) -> dict:
        return {"ftbc": self._diag, "offset_spike": self.cos.diagnostics()}

    def result_sections(self) -> dict[str, dict]:
        return self.diagnostics()
