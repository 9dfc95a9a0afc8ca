"""The protocol every calibration method follows (baseline, offset_spike, ftbc, ftbc_offset_spike).

The runner calls, in order:
  calibrate(snn, ann, batches, T_max, time_chunk) -> dict     training-split batches only; fills buffers (FTBC)
  attach(snn)                                                 install inference-time controllers (COS)
  ... evaluation: snn(x, sim_steps(T_max), time_chunk, first_chunk) ...
  diagnostics() -> dict                                       JSON-able, goes to results.json under `name`
                                                              (via result_sections(); a combined method splits it)
and reads latency(T, n_spiking) for the latency columns.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from snnconv.snn import SpikingNetwork


def option(cfg, key: str, default):
    """cfg[key] for a DictConfig / dict, getattr for other objects (a DictConfig attribute such as `update`
    would otherwise resolve to its bound method), `default` when absent or cfg is None."""
    if cfg is None:
        return default
    if hasattr(cfg, "keys"):
        return cfg[key] if key in cfg else default
    return getattr(cfg, key, default)


class Method:
    name = "baseline"
    first_chunk = 0  # steps the first chunk of every simulation must hold (COS: rho), 0 = no constraint

    def __init__(self, cfg=None):
        self.cfg = cfg

    def calibrate(
        self, snn: SpikingNetwork, ann: nn.Module, batches: Iterable[torch.Tensor], T_max: int, time_chunk: int
    ) -> dict:
        return {}

    def attach(self, snn: SpikingNetwork) -> None:
        pass

    def sim_steps(self, T_max: int) -> int:
        """Steps to simulate so that every T <= T_max can be read from prefixes of one run."""
        return T_max

    def latency(self, T: int, n_spiking: int) -> dict[str, int]:
        """Steps each layer integrates for a result read at T (and, when it differs, a pipelined deployment's)."""
        return {"latency_steps": T}

    def diagnostics(self) -> dict:
        return {}

    def result_sections(self) -> dict[str, dict]:
        """{results.json key: diagnostics}; empty sections are dropped by the runner."""
        return {self.name: self.diagnostics()}
