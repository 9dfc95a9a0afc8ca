"""COS: calibrating offset spikes by shifting the initial membrane potential (Hao et al., ICLR 2023).

Inference-time, per test sample, per layer, per neuron; nothing is learned or stored between batches.
All quantities are in ABSOLUTE units (volts of the IF neuron, threshold theta = scalar or per channel); the shift
tolerance `eps` is given in units of theta. Layer inputs are the whole sequence [T_sim, B, ...] (a static input
arrives expanded); the network is processed layer by layer, so layer l sees layer l-1's CALIBRATED output.

Algorithm (``OffsetSpikeController.initial_potential``), with base v0_b = v0_frac * theta (theta/2 for QCFS):
  v0 <- v0_b
  for pass k = 1..passes (each pass: fresh running statistics, rho extra steps of latency):
    pre-simulate rho steps from v0 on inputs[0..rho-1] with the neuron's own step (``IFNeuron.step``), keeping
    O(1) running tensors: spike count n, min pre-reset potential m over firing steps,
    max potential v over silent steps (and the input sum S, for the diagnostics);
    residual r = v(rho) - (v0 - v0_b)  (= v0_b + S - theta*n; for pass 1 this is the paper's v(rho)); passes
    k > 1 evaluate it as r_1 - theta*(n_k - n_1), the same value without the cancellation of v0's shift
    (subtracting the non-dyadic shift made r = -1e-7 instead of 0 for exact-boundary neurons, un-doing pass 1);
    DOWN if r < 0 and n > 0;  UP if r >= theta and n < rho;
    delta_down = max(theta, min_fired(m) - theta + eps*theta)      (Theorem 2 (i): min post-reset v + eps)
    delta_up   = max(theta, theta + eps*theta - max_silent(v))     (Theorem 2 (ii))
    v0 <- v0 - DOWN*delta_down + UP*delta_up
  return v0; the neuron then runs all T_sim steps from it, replaying the first rho inputs.
Theorem 2: on the rho window each shift changes the spike count by exactly -1 / +1. Theorem 3 (v0_b = theta/2):
floor(r/theta) = psi when S is in [-theta/2, theta*rho + theta/2), so the judge reads psi's sign and each pass
moves |psi| one step towards 0 (the judge is also right outside that range, where the QCFS level is clipped).

Offset spike used by the diagnostics (the paper's Table 3), on the rho window of each pass:
  desired = clip(floor(S/theta + 1/2), 0, rho)   with S = sum_{t<rho} step_current(inputs[t], t)
  psi = desired - n
For v0_b = theta/2 `desired` is the QCFS level (L = rho) of the layer's mean input, as in the released
`cal_message`; the definition is used unchanged for other v0_frac. Pass 0 is from v0_b (before calibration),
pass k from the pre-simulation after k shifts (the final one is an extra, diagnostic-only rho-step pre-sim, not
counted in the latency; turn it off with ``OffsetSpike(cfg, diagnose=False)``). Counts are summed over all
calls (batches) and reported as percent of neurons with psi == 0 and mean psi^2 (spikes^2), per layer and
neuron-weighted in total. Many ranks: the integer sums are added over ranks (`reduce_diagnostics`), so the shares
equal one process's on the same test images.

Deviations from the released code (hzc1208/ANN2SNN_COS @ ecb3587, see specs/offset_spike_and_qcfs_reference_code.md):
- Saturated neurons are not shifted up: UP requires n < rho. The released code also shifts neurons that fired at
  every pre-sim step (its silent-max sentinel -1000 gives v0 ~ 1001.5 theta: the neuron then fires at every step
  whatever its later input), although their offset spike is 0.
- `passes` > 1 works: every pass re-runs the rho-step pre-simulation from the shifted v0 with fresh statistics and
  judges the residual against the accumulated shift. The released code runs one pass (its k > 1 masks are
  commented out, its trace lists alias after pass 1, and passes >= 5 raise NameError).
- T < rho works: `sim_steps(T) = max(T, rho)`; the T-step result is the first T steps of that calibrated run
  (as the paper's T = 1, 2 numbers are prefix readouts of a longer run).
- Latency counted honestly: rho * passes + T steps per layer, n_spiking * rho * passes + T pipelined.
- O(1) memory per pre-simulation (running min / max / count) instead of rho-long trace lists and topk.
- No static-input detection from the batch size: the neuron unfolds its input from the simulation context.
- Device-agnostic (no .cuda()); FTBC's per-step bias and RTS's per-step shift are included via step_current.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from snnconv import distributed
from snnconv.methods.base import Method, MethodConfig
from snnconv.methods.registry import register_method
from snnconv.snn import SpikingNetwork
from snnconv.snn.neuron import Controller, IFNeuron, membrane_dtype


@dataclass
class OffsetSpikeConfig(MethodConfig):
    """COS settings (the paper: rho = 4 on CIFAR, 8 on ImageNet; passes = 2 / 4 for "Ours x2 / x4")."""

    name: str = "offset_spike"
    rho: int = 4  # pre-simulation steps per pass
    passes: int = 1  # judge-and-shift rounds
    eps: float = 0.001  # Theorem 2 epsilon, in units of theta

    def check(self) -> None:
        super().check()
        self.require(self.rho >= 1, f"method.rho={self.rho} must be >= 1 (pre-simulation steps)")
        self.require(self.passes >= 1, f"method.passes={self.passes} must be >= 1")
        self.require(0 < self.eps < 1, f"method.eps={self.eps} must be in (0, 1) (units of theta)")


class _LayerStats:
    """Integer sums over calls for one layer: psi rows [passes+1, 2] = (#psi==0, sum psi^2), shift rows
    [passes, 3] = (#down, #up, #saturated neurons with r >= theta left unshifted), and the neuron count."""

    def __init__(self):
        self.psi: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None
        self.neurons = 0
        self.calls = 0

    def add(self, psi_rows: list[torch.Tensor], shift_rows: list[torch.Tensor], neurons: int) -> None:
        psi, shift = torch.stack(psi_rows), torch.stack(shift_rows)
        if self.psi is None:
            self.psi, self.shift = torch.zeros_like(psi), torch.zeros_like(shift)
        self.psi += psi
        self.shift += shift
        self.neurons += neurons
        self.calls += 1


def _pct(x, n: int) -> float:
    return round(100.0 * float(x) / max(n, 1), 4)


def presimulate(
    neuron: IFNeuron,
    inputs: torch.Tensor,
    v0: torch.Tensor,
    theta: torch.Tensor,
    rho: int,
    traces: bool = True,
    input_sum: bool = False,
):
    """rho steps from v0 on inputs[0..rho-1] ([T_sim, B, ...]) with O(1) running tensors [B, ...].

    Returns (n = spike count, m_min = min pre-reset potential over firing steps (+inf if none),
    v_max = max potential over silent steps (-inf if none), v(rho), S = sum of step currents or None).
    """
    v = v0
    n = torch.zeros_like(v0)
    m_min = torch.full_like(v0, float("inf")) if traces else None
    v_max = torch.full_like(v0, float("-inf")) if traces else None
    S = torch.zeros_like(v0) if input_sum else None
    for t in range(rho):
        s, m, v = neuron.step(v, inputs[t], t, theta)
        n += s
        if traces:
            fired = s > 0
            torch.minimum(m_min, m.masked_fill(~fired, float("inf")), out=m_min)
            torch.maximum(v_max, m.masked_fill(fired, float("-inf")), out=v_max)
        if input_sum:
            S += neuron.step_current(inputs[t], t)
    return n, m_min, v_max, v, S


class OffsetSpikeController(Controller):
    """Per-layer controller installed on an IFNeuron: computes the calibrated v(0) [B, ...] from the layer's
    input sequence [T_sim, B, ...] (T_sim >= rho). `stats`, if given, accumulates the psi diagnostics.

    Work record read by `snnconv.stats` (the pre-simulation is real work): `presim_window` = rho steps,
    `presim_passes`, and `presim_spikes`, the spikes emitted by the deployed passes (a 0-d tensor, summed over
    calls until a reader sets it back to None; the diagnostic pass is not counted)."""

    def __init__(self, rho: int, passes: int, eps: float, stats: _LayerStats | None = None):
        if rho < 1 or passes < 1 or not 0 < eps < 1:
            raise ValueError(
                f"offset_spike needs rho >= 1, passes >= 1, 0 < eps < 1; got {rho}, {passes}, {eps}"
            )
        self.rho, self.passes, self.eps = int(rho), int(passes), float(eps)
        self.stats = stats
        self.presim_window, self.presim_passes = self.rho, self.passes
        self.presim_spikes: torch.Tensor | None = None

    @torch.no_grad()
    def initial_potential(self, neuron: IFNeuron, inputs: torch.Tensor) -> torch.Tensor:
        rho = self.rho
        if inputs.shape[0] < rho:
            raise RuntimeError(
                f"offset_spike pre-simulates rho={rho} steps but the neuron got {inputs.shape[0]} steps in its first "
                f"chunk; simulate Method.sim_steps(T) = max(T, rho) steps with time_chunk >= rho"
            )
        dtype = membrane_dtype(inputs)  # fp32 for bf16 inputs too, like the neuron's own membrane
        theta = neuron.threshold_view(inputs.dim() - 1).to(dtype)
        v0_base = (neuron.v0_frac * theta).expand_as(inputs[0]).to(dtype).clone()
        v0 = v0_base
        diag = self.stats is not None
        psi_rows, shift_rows = [], []
        desired = None
        for k in range(self.passes):
            n, m_min, v_max, v_rho, S = presimulate(neuron, inputs, v0, theta, rho, input_sum=diag and k == 0)
            spikes = n.sum()
            self.presim_spikes = spikes if self.presim_spikes is None else self.presim_spikes + spikes
            if k == 0:
                r, r1, n1 = v_rho, v_rho, n  # the paper's v(rho) from v0_base
            else:  # = v(rho) - (v0 - v0_base), without cancelling the shift in floating point
                r = r1 - theta * (n - n1)
            down = (r < 0) & (n > 0)
            above = r >= theta
            up = above & (n < rho)
            delta_down = torch.maximum(theta, (m_min - theta) + self.eps * theta)
            delta_up = torch.maximum(theta, (theta + self.eps * theta) - v_max)
            if diag:
                if k == 0:
                    desired = torch.floor(S / theta + 0.5).clamp_(0, rho)
                psi_rows.append(self._psi_row(desired, n))
                shift_rows.append(torch.stack([down.sum(), up.sum(), (above & ~up).sum()]))
            v0 = torch.where(down, v0 - delta_down, torch.where(up, v0 + delta_up, v0))
        if diag:
            n = presimulate(neuron, inputs, v0, theta, rho, traces=False)[0]
            psi_rows.append(self._psi_row(desired, n))
            self.stats.add(psi_rows, shift_rows, v0.numel())
        return v0

    @staticmethod
    def _psi_row(desired: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """(#psi == 0, sum psi^2) as int64 [2]; psi = desired - n is integer-valued."""
        psi = (desired - n).to(torch.int32)
        return torch.stack([(psi == 0).sum(), (psi * psi).sum()])


@register_method("offset_spike", OffsetSpikeConfig)
class OffsetSpike(Method):
    """COS as a `Method`: `attach` installs an OffsetSpikeController on every IFNeuron (`OffsetSpikeConfig`)."""

    def __init__(self, cfg=None, diagnose: bool = True):
        super().__init__(cfg)
        self.rho, self.passes, self.eps = int(self.cfg.rho), int(self.cfg.passes), float(self.cfg.eps)
        self.first_chunk = self.rho  # the pre-simulation reads a layer's first rho inputs in one call
        self.diagnose = diagnose
        self._stats: dict[str, _LayerStats] = {}
        self._reduced: dict[str, _LayerStats] = {}  # sums over ranks (reduce_diagnostics); empty in one process

    def attach(self, snn: SpikingNetwork) -> None:
        """Set `controller` on every neuron. Diagnostics keep accumulating across attach calls (per layer name)."""
        for name, neuron in snn.neurons().items():
            stats = self._stats.setdefault(name, _LayerStats()) if self.diagnose else None
            neuron.controllers = (self.controller(stats),)

    def memory_needs(self, phase: str) -> tuple[int, int]:
        """The pre-simulation of the first chunk keeps ~14 layer-sized tensors (v0, its base, the running count,
        min / max, input sum, masks, both shift distances, the step's m, s, v) at the layer it calibrates."""
        return (14, 0) if phase == "evaluate" else (0, 0)

    def controller(self, stats: _LayerStats | None = None) -> OffsetSpikeController:
        """A layer's COS controller with this method's settings (`stats` accumulates its psi diagnostics)."""
        return OffsetSpikeController(self.rho, self.passes, self.eps, stats)

    def sim_steps(self, T_max: int) -> int:
        return max(int(T_max), self.rho)

    def latency(self, T: int, n_spiking: int) -> dict[str, int]:
        extra = self.rho * self.passes
        return {"latency_steps": extra + T, "pipelined_latency_steps": n_spiking * extra + T}

    def reset_diagnostics(self) -> None:
        self._stats.clear()
        self._reduced.clear()

    def reduce_diagnostics(self) -> None:
        """Sum every layer's counters over ranks into `_reduced` (the local ones are kept, so a later evaluation
        adds to them and is reduced afresh). A rank that evaluated no image contributes zeros."""
        self._reduced = {}
        if not distributed.is_distributed():
            return
        for name in self._stats:  # every rank attached the same layers, in the same order
            s = self._stats[name]
            psi = s.psi.cpu() if s.psi is not None else torch.zeros(self.passes + 1, 2, dtype=torch.long)
            shift = s.shift.cpu() if s.shift is not None else torch.zeros(self.passes, 3, dtype=torch.long)
            flat = torch.cat([psi.flatten(), shift.flatten(), torch.tensor([s.neurons, s.calls])])
            flat = distributed.all_reduce_sum(flat)
            total = _LayerStats()
            total.psi, total.shift = flat[: psi.numel()].view_as(psi), flat[psi.numel() : -2].view_as(shift)
            total.neurons, total.calls = (int(v) for v in flat[-2:])
            self._reduced[name] = total

    def diagnostics(self) -> dict:
        """psi_zero_share (%) and psi_mse (spikes^2) per pass [0 = before, 1..passes = after each pass], per
        layer and neuron-weighted in total; shift shares (%) per pass. Sums over every evaluated batch."""

        def summarise(psi: torch.Tensor, shift: torch.Tensor, neurons: int) -> dict:
            psi, shift = psi.cpu().tolist(), shift.cpu().tolist()
            return {
                "neurons": neurons,
                "psi_zero_share": [_pct(z, neurons) for z, _ in psi],
                "psi_mse": [round(sq / max(neurons, 1), 6) for _, sq in psi],
                "shift_down_share": [_pct(d, neurons) for d, _, _ in shift],
                "shift_up_share": [_pct(u, neurons) for _, u, _ in shift],
                "saturated_unshifted_share": [_pct(s, neurons) for _, _, s in shift],
            }

        out: dict = {"rho": self.rho, "passes": self.passes, "eps": self.eps}
        stats = self._reduced or self._stats
        used = {name: s for name, s in stats.items() if s.psi is not None and s.neurons}
        if not used:
            return out
        layers = {name: summarise(s.psi, s.shift, s.neurons) for name, s in used.items()}
        total_psi = sum(s.psi.cpu() for s in used.values())
        total_shift = sum(s.shift.cpu() for s in used.values())
        total = summarise(total_psi, total_shift, sum(s.neurons for s in used.values()))
        out.update(
            {
                "psi_zero_share_before": total["psi_zero_share"][0],
                "psi_zero_share_after": total["psi_zero_share"][-1],
                "psi_mse_before": total["psi_mse"][0],
                "psi_mse_after": total["psi_mse"][-1],
                "total": total,
                "layers": layers,
            }
        )
        return out
