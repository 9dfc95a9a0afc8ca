"""Multi-step integrate-and-fire neuron with reset by subtraction, and the hooks calibration methods use.

Dynamics at step t (absolute units, theta = threshold):
    m(t) = v(t-1) + I(t) [+ theta/(2T) if shift_per_step] - bias[t]      (bias: per channel, FTBC's beta)
    s(t) = 1[m(t) >= theta];  output theta * s(t);  v(t) = m(t) - theta * s(t)
with v(0) = v0_frac * theta, or a per-neuron tensor from a controller (COS).

Shapes: the layer input is time-major with time folded into the batch, [k*B, ...] for a chunk of k steps
(or [B, ...] for a static input such as the encoded image, used as the same current at every step); the neuron
unfolds it to [k, B, ...] and loops over t. State (v, step count) persists across the chunks of one simulation;
`SpikingNetwork` resets it at the start of every simulation, so users never call a reset.

Hooks (the neuron exposes them, the algorithms live in `snnconv.methods`): a neuron holds a tuple of
`Controller`s (`IFNeuron.controllers`); each may override
  initial_potential(neuron, inputs[k, B, ...]) -> v0 [B, ...] or None   (sees the first chunk; the first
                                                                        non-None answer wins, e.g. COS)
  on_step(neuron, t, current, v_prev, m, s) -> (m, s)                   (may change m and re-fire, e.g. FTBC;
                                                                        chained in tuple order)
A neuron none of whose controllers overrides `on_step` runs the fused in-place step.

Fine-tuning (`snnconv.finetune`): while `SimContext.train` is set (`SpikingNetwork.differentiable`), every neuron
runs `step` out of place with the differentiable spike of `snnconv.snn.surrogate`: the same values (tested bit
for bit), a local gradient in the backward pass, no controllers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from snnconv.ann.base import NeuronSpec
from snnconv.snn.surrogate import TrainingSpike, spike


def if_step(v: torch.Tensor, current: torch.Tensor, threshold: torch.Tensor):
    """One IF step with reset by subtraction. Returns (s in {0,1}, m = pre-reset potential, v_next)."""
    m = v + current
    s = (m >= threshold).to(m.dtype)
    return s, m, m - threshold * s


def membrane_dtype(x: torch.Tensor) -> torch.dtype:
    """The membrane's dtype for inputs `x`: float32 for bf16 / fp16 / fp32 inputs (an autocast must not turn the
    potential into a 7-bit-mantissa accumulator), float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def per_channel(vec: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a [C] tensor so it broadcasts over a [B, C, ...] tensor with `ndim` dims (a [] tensor is returned as is)."""
    if vec.dim() == 0:
        return vec
    return vec.view(-1, *([1] * (ndim - 2)))


class Controller:
    """What a calibration method installs on an `IFNeuron` (see the module docstring). Both hooks are no-ops
    here; a subclass overrides the ones it needs. Units: absolute potentials (theta = the neuron's threshold)."""

    def initial_potential(self, neuron: IFNeuron, inputs: torch.Tensor) -> torch.Tensor | None:
        """v(0) [B, ...] from the first chunk's layer inputs [k, B, ...], or None to leave it to others."""
        return None

    def on_step(
        self,
        neuron: IFNeuron,
        t: int,
        current: torch.Tensor,
        v_prev: torch.Tensor,
        m: torch.Tensor,
        s: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """After step t ([B, ...] tensors: layer input `current`, potential v(t-1) = `v_prev`, pre-reset potential
        m and spikes s in {0, 1}): return the (m, s) the neuron keeps; v(t) = m - theta * s."""
        return m, s


def _overrides(ctrl: Controller, hook: str) -> bool:
    return getattr(type(ctrl), hook) is not getattr(Controller, hook)


class SimContext:
    """Shared by all neurons of one network: batch size B, steps per call (chunk), total steps T, simulation id."""

    def __init__(self):
        self.batch = 0
        self.chunk = 1
        self.total_steps = 0
        self.sim_id = 0
        self.train: TrainingSpike | None = None  # set while fine-tuning: neurons take the differentiable path


class IFNeuron(nn.Module):
    def __init__(self, spec: NeuronSpec, ctx: SimContext):
        super().__init__()
        self.register_buffer("threshold", spec.threshold.detach().float().clone())
        self.register_buffer("bias", torch.zeros(0))  # [T_max, C] once a method sets it
        self.v0_frac = float(spec.v0_frac)
        self.shift_per_step = bool(spec.shift_per_step)
        self.ctx = ctx
        self.controllers: tuple[Controller, ...] = ()
        self.v: torch.Tensor | None = None
        self.t = 0

    def reset(self):
        self.v, self.t = None, 0

    def set_bias(self, bias: torch.Tensor) -> None:
        """bias: [T_max, C] per-step, per-channel value subtracted from the membrane (C = 1 broadcasts)."""
        self.bias = bias.detach().to(self.threshold.device, torch.float32).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "bias"
        if key in state_dict:  # the bias length is set by calibration, so adopt the saved shape
            self.bias = torch.empty_like(state_dict[key], device=self.threshold.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def threshold_view(self, ndim: int) -> torch.Tensor:
        """The threshold theta viewed to broadcast over a [B, C, ...] tensor with `ndim` dims."""
        return per_channel(self.threshold, ndim)

    def step_offset(self, t: int, ndim: int) -> torch.Tensor | None:
        """What step t adds to the input current of a [B, ...] (`ndim` dims) layer: the source's per-step shift
        theta/(2T) minus the bias at t, broadcastable per channel; None when both are absent."""
        offset = None
        if self.shift_per_step:
            offset = self.threshold_view(ndim) / (2 * self.ctx.total_steps)
        if self.bias.numel():
            if t >= self.bias.shape[0]:
                raise RuntimeError(f"bias calibrated for {self.bias.shape[0]} steps, simulation needs step {t + 1}")
            b = per_channel(self.bias[t], ndim)
            offset = -b if offset is None else offset - b
        return offset

    def step_current(self, current: torch.Tensor, t: int) -> torch.Tensor:
        """Input current at step t plus the source's per-step shift, minus the bias at t. current: [B, ...]."""
        offset = self.step_offset(t, current.dim())
        return current if offset is None else current + offset

    def step(self, v: torch.Tensor, current: torch.Tensor, t: int, theta: torch.Tensor, train: TrainingSpike | None = None):
        """One step from v(t-1) with the layer input `current` [B, ...]: (s, m, v_next) with
        m = (v + current) + step_offset(t), rounded exactly as the fused in-place simulation rounds it, so
        calibration trajectories (FTBC, COS) and fine-tuning (`train`) are the deployed ones bit for bit.

        `train` (fine-tuning): s is the differentiable `spike` of snnconv.snn.surrogate (same value, local
        gradient in the backward pass), and with `train.detach_reset` the reset theta * s carries no gradient."""
        m = v + current
        offset = self.step_offset(t, m.dim())
        if offset is not None:
            m.add_(offset)
        if train is None:
            s = (m >= theta).to(m.dtype)
            return s, m, m - theta * s
        s = spike(m, theta, train.rule, train.sparsity, self)
        return s, m, m - theta * (s.detach() if train.detach_reset else s)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """[k*B, ...] (sequence) or [B, ...] (static) -> [k, B, ...]."""
        B, k = self.ctx.batch, self.ctx.chunk
        if x.shape[0] == B * k:
            return x.view(k, B, *x.shape[1:])
        if x.shape[0] == B:
            return x.unsqueeze(0).expand(k, *x.shape)
        raise RuntimeError(f"neuron input batch {x.shape[0]} is neither B={B} nor chunk*B={k * B}")

    def initial_potential(self, inputs: torch.Tensor) -> torch.Tensor:
        """v(0) for inputs [k, B, ...]: the first controller's per-neuron value, or v0_frac * theta."""
        for ctrl in self.controllers:
            if _overrides(ctrl, "initial_potential"):
                v0 = ctrl.initial_potential(self, inputs)
                if v0 is not None:
                    return v0
        theta = self.threshold_view(inputs.dim() - 1)
        return (self.v0_frac * theta).expand_as(inputs[0]).to(membrane_dtype(inputs))  # forward() copies it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.unfold(x)
        if self.ctx.train is not None:
            return self._forward_train(seq)
        if self.t == 0:  # owned (the fast path updates it in place), fp32 whatever the input dtype
            self.v = self.initial_potential(seq).to(membrane_dtype(seq), copy=True)
        theta = self.threshold_view(seq.dim() - 1)
        on_step = [c for c in self.controllers if _overrides(c, "on_step")]
        out = torch.empty_like(seq, memory_format=torch.contiguous_format)  # viewed as [k*B, ...] below
        v = self.v
        same = out.dtype == v.dtype  # fp32 input: spikes written straight into the output
        for i in range(seq.shape[0]):
            t = self.t + i
            if not on_step:  # fused in place: 4-5 passes over the state instead of 7 (scripts/bench_simulation.py)
                v.add_(seq[i])
                offset = self.step_offset(t, v.dim())
                if offset is not None:
                    v.add_(offset)
                if same:
                    torch.ge(v, theta, out=out[i])  # spikes as 0/1 in the output dtype, no bool->float copy
                    out[i].mul_(theta)
                    v.sub_(out[i])
                else:  # reset by the fp32 theta, output rounded to the input dtype (bf16 under autocast)
                    spikes = torch.ge(v, theta).to(v.dtype).mul_(theta)
                    v.sub_(spikes)
                    out[i].copy_(spikes)
            else:
                s, m, _ = self.step(v, seq[i], t, theta)
                for ctrl in on_step:
                    m, s = ctrl.on_step(self, t, seq[i], v, m, s)
                v = m - theta * s
                torch.mul(s, theta, out=out[i])
        self.v = v
        self.t += seq.shape[0]
        return out.view(-1, *seq.shape[2:])

    def _forward_train(self, seq: torch.Tensor) -> torch.Tensor:
        """Fine-tuning path: the same steps (`step`, same rounding) out of place, so autograd records them
        through time; inference-time controllers are not applied (COS stays a test-time step)."""
        if self.controllers:
            raise RuntimeError("fine-tuning runs without neuron controllers; remove them first")
        if self.t == 0:
            self.v = self.initial_potential(seq)
        theta = self.threshold_view(seq.dim() - 1)
        v, outs = self.v, []
        for i in range(seq.shape[0]):
            s, _, v = self.step(v, seq[i], self.t + i, theta, self.ctx.train)
            outs.append(s * theta)
        self.v = v
        self.t += seq.shape[0]
        return torch.stack(outs).view(-1, *seq.shape[2:])

    def extra_repr(self):
        th = self.threshold
        th_s = f"{th.item():.4g}" if th.dim() == 0 else f"[{th.numel()} channels]"
        return f"threshold={th_s}, v0={self.v0_frac}*theta, shift_per_step={self.shift_per_step}, bias_steps={self.bias.shape[0] if self.bias.numel() else 0}"
