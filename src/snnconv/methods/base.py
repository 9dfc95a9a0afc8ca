"""The protocol every calibration method follows, and the base of every method's config.

A method is a `Method` subclass plus a `MethodConfig` dataclass (the only copy of its defaults and value checks),
tied together by `snnconv.methods.registry.register_method`. The runner calls, in order:
  calibration_images() -> (batches, batch_size)               training-split images it needs ((0, 0) = none)
  memory_needs(phase), calibration_splits                     what the memory planner must know (before training)
  calibrate(snn, ann, batches, T_max, time_chunk) -> dict     fills buffers (FTBC), training-split batches only
  attach(snn)                                                 installs inference-time controllers (COS)
  ... evaluation: snn(x, sim_steps(T_max), time_chunk, first_chunk) ...
  reduce_diagnostics()                                        after evaluation, on every rank: sum over ranks
  result_sections() -> {results.json key: JSON-able dict}     empty sections are dropped
and reads latency(T, n_spiking) for the latency columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from snnconv import SnnconvError
from snnconv.snn import SpikingNetwork


@dataclass
class MethodConfig:
    """Base of the `method` config group's schemas. `name` selects the registered method."""

    name: str = "baseline"

    def check(self) -> None:
        """Raise SnnconvError (one line, naming the valid range) for values the types cannot refuse."""

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            raise SnnconvError(message)


def to_config(config_cls: type[MethodConfig], cfg: Any) -> MethodConfig:
    """A checked `config_cls` instance from None (defaults), an instance, a DictConfig / mapping, or any object
    with the fields as attributes (e.g. SimpleNamespace). Unknown keys are ignored; values are not coerced."""
    if isinstance(cfg, config_cls):
        out = cfg
    else:
        fields = [f.name for f in dataclasses.fields(config_cls) if f.name != "name"]
        if cfg is None:
            given = {}
        elif isinstance(cfg, Mapping) or hasattr(cfg, "keys"):
            given = {k: cfg[k] for k in fields if k in cfg}
        else:
            given = {k: getattr(cfg, k) for k in fields if hasattr(cfg, k)}
        out = config_cls(**given)
    out.check()
    return out


class Method:
    """Base method = the plain conversion (nothing to calibrate, latency T). Subclasses are registered with
    `register_method(name, ConfigClass)`, which sets `name` and `Config`."""

    name: ClassVar[str] = "baseline"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    first_chunk = 0  # steps the first chunk of every simulation must hold (COS: rho), 0 = no constraint
    # False: a calibration batch's result depends on the whole batch (FTBC's per-step channel means), so the
    # memory planner must not split it into micro-batches (snnconv.snn.memory)
    calibration_splits: ClassVar[bool] = True
    progress = False  # set by the runner: show a progress bar for a calibration longer than a few seconds

    def __init__(self, cfg: Any = None):
        self.cfg = to_config(self.Config, cfg)

    def calibration_images(self) -> tuple[int, int]:
        """(batches, batch_size) of training-split calibration images `calibrate` needs; (0, 0) = none."""
        return 0, 0

    def memory_needs(self, phase: str) -> tuple[int, int]:
        """(neuron_copies, state_copies) for the memory planner (`snnconv.snn.memory.predicted_peak`): working
        tensors per image this method adds to a plain simulation during `phase` ("calibrate" | "evaluate"), in
        units of the largest spiking layer and of all membranes together. Counted from the code, with margin."""
        return 0, 0

    def calibrate(
        self, snn: SpikingNetwork, ann: nn.Module, batches: Iterable[torch.Tensor], T_max: int, time_chunk: int
    ) -> dict:
        return {}

    def attach(self, snn: SpikingNetwork) -> None:
        """Install inference-time controllers on `snn`'s neurons (none by default)."""

    def sim_steps(self, T_max: int) -> int:
        """Steps to simulate so that every T <= T_max can be read from prefixes of one run."""
        return T_max

    def latency(self, T: int, n_spiking: int) -> dict[str, int]:
        """Steps each layer integrates for a result read at T (and, when it differs, a pipelined deployment's)."""
        return {"latency_steps": T}

    def reduce_diagnostics(self) -> None:
        """Called by `evaluate` on every rank after its shard: make `diagnostics()` report the sums over all ranks
        (snnconv.distributed). Must not change the local counters (a later evaluation adds to them)."""

    def diagnostics(self) -> dict:
        return {}

    def result_sections(self) -> dict[str, dict]:
        """{results.json key: diagnostics}; empty sections are dropped by the runner."""
        return {self.name: self.diagnostics()}
