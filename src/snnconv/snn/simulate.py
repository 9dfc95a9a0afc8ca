"""Running a converted network over T steps, `time_chunk` steps folded into the batch per call.

`SpikingNetwork(x, T, time_chunk)` takes a static image batch x [B, C, H, W] and returns the analog output
layer's value at every step, [T, B, classes]. Stateless layers see [chunk*B, ...]; neurons carry their state
across chunks; the result does not depend on `time_chunk` (tests/test_simulate.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from snnconv.snn.neuron import IFNeuron, SimContext
from snnconv.snn.surrogate import TrainingSpike


class StaticMemo(nn.Module):
    """Wraps a layer whose input is the static image: computed once per simulation, reused by later chunks."""

    def __init__(self, module: nn.Module, ctx: SimContext):
        super().__init__()
        self.module = module
        self.ctx = ctx
        self._key = None
        self._out = None

    def forward(self, x):
        if self._key != self.ctx.sim_id or self._out is None:
            self._out, self._key = self.module(x), self.ctx.sim_id
        return self._out

    def clear(self):
        self._key, self._out = None, None


def default_time_chunk(device: torch.device | str, T: int) -> int:
    """Steps folded per call when `snn.time_chunk=0`: all T on accelerators, 1 on CPU (scripts/bench_simulation.py)."""
    return T if torch.device(device).type in ("cuda", "mps") else 1


class SpikingNetwork(nn.Module):
    def __init__(self, net: nn.Module, ctx: SimContext):
        super().__init__()
        self.net = net
        self.ctx = ctx

    def neurons(self) -> dict[str, IFNeuron]:
        """Spiking layers in definition order (= forward order for every model here)."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, IFNeuron)}

    @contextlib.contextmanager
    def differentiable(self, train: TrainingSpike):
        """Inside the block every neuron takes the out-of-place differentiable path (`IFNeuron.step` with
        `train`: the same values, a local gradient for the spike); the fused evaluation path is restored after."""
        self.ctx.train = train
        try:
            yield self
        finally:
            self.ctx.train = None

    def reset(self) -> None:
        for m in self.net.modules():
            if isinstance(m, IFNeuron):
                m.reset()
            elif isinstance(m, StaticMemo):
                m.clear()

    def forward(self, x: torch.Tensor, T: int, time_chunk: int | None = None, first_chunk: int = 0) -> torch.Tensor:
        """x: [B, ...] static input; returns the output layer at every step, [T, B, classes].

        Steps run `time_chunk` at a time, except the first chunk, which holds at least `first_chunk` steps
        (COS pre-simulates on a layer's first rho inputs, so it needs them in one call; later steps are ordinary).
        """
        k = max(1, min(time_chunk or default_time_chunk(x.device, T), T))
        first = min(T, max(k, int(first_chunk)))
        B = x.shape[0]
        self.ctx.batch, self.ctx.total_steps = B, T
        self.ctx.sim_id += 1
        self.reset()
        outs = []
        try:
            t0 = 0
            while t0 < T:
                self.ctx.chunk = first if t0 == 0 else min(k, T - t0)
                t0 += self.ctx.chunk
                y = self.net(x)
                if y.shape[0] == B and self.ctx.chunk > 1:  # no spiking layer on the path: static output
                    y = y.unsqueeze(0).expand(self.ctx.chunk, *y.shape).reshape(-1, *y.shape[1:])
                outs.append(y.view(self.ctx.chunk, B, *y.shape[1:]))
        finally:
            self.reset()
        return torch.cat(outs)
