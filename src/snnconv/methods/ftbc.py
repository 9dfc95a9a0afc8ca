"""FTBC: forward temporal bias correction (Wu, Bojkovic, Gu, Suo, Zou, ECCV 2024, arXiv 2403.18388).

A per-layer, per-channel, per-time-step bias is calibrated on training images so that, at EVERY step t, the
channel mean of the SNN output theta * s_l[t] matches the channel mean of the ANN activation a_l.

Sign convention. The paper ADDS b_l[t] to the membrane; the released code (and this file) store
beta_l[t] = -b_l[t], which the neuron SUBTRACTS before its threshold test (``IFNeuron.bias`` [T_max, C],
``IFNeuron.step_current``):  m = v + I_l[t] - beta_l[t];  s = 1[m >= theta];  v <- m - theta * s.
C is the channel dim (dim 1) of the layer's input ([B, C, H, W] conv, [B, F] linear: C = F).

alpha. ``cfg.alpha`` is the STEP SIZE of the bias update (the code's ``curr_t_alpha``), NOT the paper's
Proposition alpha (the target firing probability a/theta). The update is Robbins-Monro root finding of
g(beta) = E[theta * H(m(beta) - theta)] - E[a] per channel, mean over (batch, spatial) positions.

Update rules (``cfg.update``), applied at step t inside the layer, with the layer's CURRENT beta in m:
  residual (default; the RTS / SNNC trees' rule with their re-fire correction):
      delta_t = mean_c(theta * s) - mean_c(a);   beta[t] += alpha * delta_t;
      the step is then re-run with the updated beta from the same v(t-1): m' = v(t-1) + I[t] - beta[t],
      s' = 1[m' >= theta] (= m - alpha * delta_t, evaluated by ``IFNeuron.step`` exactly as a fresh simulation
      rounds it).
  oracle (the QCFS tree's local rule, kept for comparison): an element-wise oracle membrane v_o, started at the
      deployed neuron's v(0) (v0_frac * theta; the COS v0 for ``ftbc_offset_spike``), integrates the RAW input
      current (no bias):  m_o = v_o + I[t]; s_o = 1[m_o >= theta]; e = theta * s_o - a (element-wise, needs the
      full ANN activation); m_o' = m_o - e; s_o' = 1[m_o' >= theta]; v_o = m_o' - theta * s_o';
      beta[t] += alpha * mean_c(e); the deployed neuron's step is then re-run with the new beta as above.
The deployed neuron continues from the re-fired state and outputs theta * s', so layer l+1 sees layer l's
corrected spikes. Layers run in topological order within one forward (residual graphs included), so this equals
re-simulating the network up to layer l with every layer's updated beta: exactly what the references recompute
per layer (``snnconv.methods.reference.naive_calibrate``; tests/test_ftbc.py checks equality).

Cost per batch: one ANN forward (hooks keep only mean_c(a), O(C) per layer; the full a only for ``oracle``) plus
one T_max-step SNN forward, instead of L * (1 ANN + 1 T-step SNN) (QCFS tree) or 2 * L * T full forwards
(RTS / SNNC trees), L = number of spiking layers.

Causality. beta_l[t] depends only on steps <= t (of layers <= l), so one calibration at T_max serves every
T <= T_max: evaluation reads beta[:T]. This needs T-independent dynamics: ``rts`` with ``rts_shift=per_step``
adds theta/(2T) at every step, so biases calibrated at T_max are not those for a smaller T; calibrate raises
SnnconvError asking for ``ann.rts_shift=initial`` (v0 = theta/2, T-independent) instead of silently calibrating
one T.

State. ANN and SNN run in eval mode during calibration (each submodule's own mode is restored afterwards).
Biases start from zeros at every ``calibrate`` call (previous biases are discarded), live in the neuron's
registered ``bias`` buffer (saved in the state_dict, moved by ``.to()``), and the controllers are removed after
calibration.

Deviations from the released code (specs/ftbc_reference_code.md):
- No generator exhaustion: every batch of every iteration calibrates every layer (the QCFS tree calibrates with
  its first batch only).
- No aliasing: biases are one [T_max, C] buffer per layer, not ``[zeros(C)] * T`` lists that alias on CPU, are
  missing from checkpoints and are not moved by ``.to()``.
- Residual update everywhere it applies (the QCFS tree ignores the layer's own beta), with one consistent ``>=``
  (the SNNC tree re-fires with ``>``); every calibrated layer's bias is applied at inference (SNNC's
  ``SpikeResModule`` never applies it) and layer mapping is by module name (RTS's ResNet mapping bug).
- No test-set model selection and no per-iteration test evaluation: training batches only.
- One streaming pass per batch instead of one network re-simulation per layer (and per step).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from snnconv import SnnconvError, distributed
from snnconv.ann.base import SourceActivation
from snnconv.methods.base import Method, MethodConfig
from snnconv.methods.registry import register_method
from snnconv.progress import progress_bar
from snnconv.snn import SpikingNetwork
from snnconv.snn.neuron import Controller, IFNeuron, if_step
from snnconv.utils import capture_outputs, eval_mode, modules_of_type

UPDATES = ("residual", "oracle")
# Largest step size measured stable: with 32 updates per bias alpha 0.1 / 0.3 / 0.5 gave 82.2 / 82.9 / 82.6 % at
# T=1 on VGG16 w/4 QCFS (Fashion-MNIST), 0.7 collapsed to 37.0 % (docs/notes.md); alpha=50 fell to chance.
ALPHA_STABLE = 0.5


@dataclass
class FTBCConfig(MethodConfig):
    """FTBC settings. 4 x 8 batches of 64 = 32 updates per bias: 4 updates (1 x 4 x 128, the first default) left
    FTBC below the plain conversion on Fashion-MNIST; 32 beat it (docs/notes.md)."""

    name: str = "ftbc"
    alpha: float = 0.5  # step size of the bias update (the code's curr_t_alpha, not the paper's Proposition alpha)
    iterations: int = 4  # passes over the calibration batches
    batches: int = 8  # calibration batches per iteration (training split)
    batch_size: int = 64  # calibration images per batch (batches x batch_size <= data.calib_size)
    update: str = "residual"  # residual (RTS/SNNC trees' rule) | oracle (QCFS tree's local rule)

    def check(self) -> None:
        super().check()
        self.require(0 < self.alpha <= 1, f"method.alpha={self.alpha} is outside its range: must be in (0, 1] (the "
                     f"bias update's step size; larger steps overshoot, {ALPHA_STABLE} and below measured stable)")
        self.require(self.iterations >= 1, f"method.iterations={self.iterations} must be >= 1")
        self.require(self.batches >= 1, f"method.batches={self.batches} must be >= 1")
        self.require(self.batch_size >= 1, f"method.batch_size={self.batch_size} must be >= 1")
        self.require(self.update in UPDATES, f"method.update={self.update!r} is not one of {', '.join(UPDATES)}")


def warn_step_size(alpha: float) -> None:
    """One warning line on stderr for a step size above the largest measured stable (`ALPHA_STABLE`)."""
    if alpha > ALPHA_STABLE:
        print(f"warning: method.alpha={alpha} is above {ALPHA_STABLE}, the largest FTBC step size measured stable "
              "(0.7 collapsed VGG16 w/4 from 82.6 to 37.0 % at T=1, docs/notes.md)", file=sys.stderr)


def channel_mean(x: torch.Tensor, accumulate: torch.dtype = torch.float64) -> torch.Tensor:
    """Mean over every dim but the channel dim 1, over the positions of ALL ranks: [B, C, ...] -> [C] ([B, F] ->
    [F]), in x's dtype. Per channel the sum (accumulated in `accumulate`) and the position count are added over
    ranks, then divided (snnconv.distributed; one process: the plain mean).

    Exactness across ranks holding slices of one batch: float64 sums of float32 values differ only in summation
    order, far below float32's rounding of the quotient; spike tensors (0/1) are summed in float32, exact for
    counts < 2^24 in any order (callers pass accumulate=torch.float32 for them, 10x cheaper here)."""
    dims = [0, *range(2, x.dim())]
    sums = x.sum(dim=dims, dtype=accumulate).double()
    count = x.numel() // max(x.shape[1], 1)
    if distributed.is_distributed():
        reduced = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([count])]))
        sums, count = reduced[:-1], reduced[-1]
    return (sums / count).to(x.dtype)


def check_T_independent(neurons: dict[str, IFNeuron]) -> None:
    """SnnconvError when a neuron's dynamics depend on T (RTS's per-step shift): biases fitted at T_max would
    not be those of a smaller T."""
    per_step = [n for n, neuron in neurons.items() if neuron.shift_per_step]
    if per_step:
        raise SnnconvError(
            "FTBC calibrates its biases once at T_max and reads them at every T <= T_max, but "
            f"ann.rts_shift=per_step adds theta/(2T) at every step (layers {per_step[:3]}...), so the dynamics "
            "depend on T; use ann.rts_shift=initial (v0 = theta/2, T-independent)"
        )


def source_activations(ann: nn.Module, names: list[str]) -> dict[str, SourceActivation]:
    """The ANN's source activations named like the SNN's neurons (SnnconvError when they do not match)."""
    acts = modules_of_type(ann, SourceActivation)
    missing = [n for n in names if n not in acts]
    if missing or len(acts) != len(names):
        raise SnnconvError(
            f"the ANN's activations {list(acts)[:4]}... do not match the SNN's neurons {names[:4]}...; "
            "pass the ANN the SNN was converted from"
        )
    return {n: acts[n] for n in names}


@torch.no_grad()
def ann_targets(ann: nn.Module, acts: dict[str, SourceActivation], x: torch.Tensor, full: bool) -> dict:
    """One ANN forward on x; per named activation its channel mean [C] (full=False) or the output (full=True)."""
    transform = (lambda a: a.detach().clone()) if full else (lambda a: channel_mean(a.detach().float()))
    try:
        out = capture_outputs(acts, lambda: ann(x), transform=transform)
    except RuntimeError as exc:
        if "more than once" not in str(exc):
            raise
        raise SnnconvError(f"{exc}; FTBC needs one call per activation and forward") from exc
    not_run = [n for n in acts if n not in out]
    if not_run:
        raise SnnconvError(f"activations {not_run} did not run in the ANN forward")
    return out


class FTBCController(Controller):
    """Per-layer FTBC update, installed in ``IFNeuron.controllers`` during calibration (``on_step`` runs after
    the neuron's own step, with the layer's current bias already in m).

    ``target`` (set per batch): mean_c(a) [C] for ``residual``, the full activation [B, ...] for ``oracle``.
    ``record`` (set by the caller): when not None, mean_c|delta_t| is added to ``abs_delta[record, t]``.
    """

    def __init__(self, alpha: float, update: str, steps: int, iterations: int = 1):
        self.alpha = float(alpha)
        if update not in UPDATES:
            raise SnnconvError(f"method.update={update!r} is not one of {', '.join(UPDATES)}")
        self.update = update
        self.target: torch.Tensor | None = None
        self.record: int | None = None
        self.abs_delta = torch.zeros(iterations, steps)
        self._v_oracle: torch.Tensor | None = None

    def on_step(self, neuron: IFNeuron, t: int, current, v_prev, m, s):
        m, s, _ = self.step(neuron, t, current, m, s, v_prev)
        return m, s

    def step(self, neuron: IFNeuron, t: int, current, m, s, v_prev):
        """Update beta[t] from the step (m, s) computed with the old beta from v_prev; return the step re-run
        with the new beta: (m', s', v') with v' = m' - theta * s'."""
        theta = neuron.threshold_view(m.dim())
        if self.update == "residual":
            delta = channel_mean(s, torch.float32) * neuron.threshold - self.target
        else:
            if t == 0:
                self._v_oracle = v_prev.clone()
            s_o, m_o, _ = if_step(self._v_oracle, current, theta)  # raw current: no bias, no shift
            e = theta * s_o - self.target
            _, _, self._v_oracle = if_step(m_o, -e, theta)  # m_o' = m_o - e, re-fire, reset
            delta = channel_mean(e)
        neuron.bias[t] += self.alpha * delta
        if self.record is not None:
            if self.abs_delta.device != delta.device:
                self.abs_delta = self.abs_delta.to(delta.device)
            self.abs_delta[self.record, t] += delta.abs().mean()
        s2, m2, v2 = neuron.step(v_prev, current, t, theta)
        return m2, s2, v2


def clear_biases(neurons: dict[str, IFNeuron]) -> None:
    for neuron in neurons.values():
        neuron.set_bias(torch.zeros(0))


def init_bias(neuron: IFNeuron, steps: int, target: torch.Tensor) -> None:
    """Zero biases [steps, C] with C from an ANN target ([C] channel mean or [B, C, ...] activation)."""
    C = target.shape[1] if target.dim() > 1 else target.shape[0]
    neuron.set_bias(torch.zeros(steps, C))


@register_method("ftbc", FTBCConfig)
class FTBC(Method):
    """FTBC as a `Method` (see the module docstring and `FTBCConfig`)."""

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.alpha, self.iterations, self.update = float(self.cfg.alpha), int(self.cfg.iterations), self.cfg.update
        self._diag: dict = {}

    calibration_splits = False  # beta[t] is updated from the whole batch's channel mean before the re-fire

    def calibration_images(self) -> tuple[int, int]:
        return int(self.cfg.batches), int(self.cfg.batch_size)

    def memory_needs(self, phase: str) -> tuple[int, int]:
        """Calibration: the step, the update and the re-fired step keep ~8 layer-sized tensors (m, s, v and their
        re-fired copies, the delta's temporaries); `oracle` also keeps every layer's full ANN activation and an
        oracle membrane (2 copies of all membranes). Evaluation: the plain step."""
        if phase != "calibrate":
            return 0, 0
        return 8, 2 if self.update == "oracle" else 0

    def controllers(self, ftbc: FTBCController) -> tuple[Controller, ...]:
        """What a neuron runs with during calibration (a combined method adds its own)."""
        return (ftbc,)

    @torch.no_grad()
    def calibrate(
        self,
        snn: SpikingNetwork,
        ann: nn.Module,
        batches: Iterable[torch.Tensor],
        T_max: int,
        time_chunk: int,
    ) -> dict:
        start = time.perf_counter()
        batches = list(batches)
        if not batches:
            raise SnnconvError("FTBC needs at least one calibration batch")
        warn_step_size(self.alpha)
        neurons = snn.neurons()
        check_T_independent(neurons)
        acts = source_activations(ann, list(neurons))
        steps = self.sim_steps(T_max)
        ctrls = {n: FTBCController(self.alpha, self.update, steps, self.iterations) for n in neurons}
        clear_biases(neurons)
        try:
            bar = progress_bar(None, total=self.iterations * len(batches), desc=f"{self.name} calibration",
                               disable=not self.progress, leave=False)
            with eval_mode(ann, snn), bar:
                for it in range(self.iterations):
                    for x in batches:
                        targets = ann_targets(ann, acts, x, full=self.update == "oracle")
                        for name, neuron in neurons.items():
                            if neuron.bias.numel() == 0:
                                init_bias(neuron, steps, targets[name])
                            ctrl = ctrls[name]
                            ctrl.target, ctrl.record = targets[name], it
                            neuron.controllers = self.controllers(ctrl)
                        snn(x, steps, time_chunk, self.first_chunk)
                        for ctrl in ctrls.values():
                            ctrl.target = ctrl._v_oracle = None
                        bar.update(1)
        finally:
            for neuron in neurons.values():
                neuron.controllers = ()
        self._diag = self._summarise(neurons, ctrls, len(batches), time.perf_counter() - start)
        return self._diag

    def _summarise(self, neurons, ctrls, n_batches: int, seconds: float) -> dict:
        layers = {}
        per_iter = torch.zeros(self.iterations)
        for name, neuron in neurons.items():
            # [iterations, steps]: batch mean of mean_c |delta_t|, read to the host (it lives on the network's device)
            d = ctrls[name].abs_delta.cpu() / n_batches
            per_iter += d.mean(1)
            layers[name] = {
                "mean_abs_delta": round(float(d[-1].mean()), 8),
                "mean_abs_delta_per_t": [round(float(v), 8) for v in d[-1]],
                "bias_norm": round(float(neuron.bias.norm()), 8),
                "channels": int(neuron.bias.shape[1]),
            }
        per_iter /= max(len(neurons), 1)
        return {
            "batches": n_batches,
            "iterations": self.iterations,
            "alpha": self.alpha,
            "update": self.update,
            "steps": int(next(iter(neurons.values())).bias.shape[0]) if neurons else 0,
            "seconds": round(seconds, 4),
            "mean_abs_delta": round(float(per_iter[-1]), 8),
            "mean_abs_delta_per_iteration": [round(float(v), 8) for v in per_iter],
            "layers": layers,
        }

    def diagnostics(self) -> dict:
        return self._diag
