"""The IF neuron's mathematics: QCFS equivalence (Bu et al. Theorem), reset by subtraction, hooks."""

from __future__ import annotations

import pytest
import torch

from snnconv.ann.base import NeuronSpec
from snnconv.ann.qcfs import qcfs
from snnconv.snn.neuron import Controller, IFNeuron, SimContext, if_step


def simulate_constant(x: torch.Tensor, theta: torch.Tensor, T: int, v0_frac: float = 0.5) -> torch.Tensor:
    """Drive one IFNeuron (per-channel thresholds theta [C]) with the constant input x [B, C] for T steps;
    returns the spike counts [B, C]."""
    ctx = SimContext()
    ctx.batch, ctx.chunk, ctx.total_steps = x.shape[0], T, T
    neuron = IFNeuron(NeuronSpec(theta, v0_frac=v0_frac), ctx)
    out = neuron(x)  # static input: the same current at every step
    return (out.view(T, *x.shape) / theta).sum(0)


def qcfs_level(x, theta, L):
    return torch.clamp(torch.floor(x * L / theta + 0.5), 0, L)


@pytest.mark.parametrize("seed", range(5))
def test_if_with_half_threshold_start_reproduces_qcfs_on_exact_inputs(seed):
    """Dyadic x and theta: every sum is exact in float32, including inputs ON the rounding boundaries."""
    g = torch.Generator().manual_seed(seed)
    for L in (1, 2, 3, 4, 7, 8, 16):
        C = 8
        theta = torch.randint(1, 65, (C,), generator=g).float() / 8  # 1/8 .. 8
        k = torch.randint(-64, 2 * 64, (4096, C), generator=g).float()
        x = k * theta / 64  # dyadic; x L/theta + 1/2 is an integer when k L = 32 (mod 64), e.g. k = 32
        n = simulate_constant(x, theta, T=L)
        expected = qcfs_level(x, theta, L)
        assert torch.equal(n, expected), (L, (n - expected).abs().max())
        boundary = (x * L / theta + 0.5) == torch.floor(x * L / theta + 0.5)
        if L > 1:
            assert boundary.any()  # the property is checked at the boundaries too


@pytest.mark.parametrize("L", [2, 4, 8, 16])
def test_if_rate_equals_qcfs_activation_on_random_inputs(L):
    """Continuous random x and theta: the SNN's mean output over T = L steps is the QCFS activation."""
    g = torch.Generator().manual_seed(L)
    theta = torch.rand(16, generator=g) * 4 + 0.25
    x = (torch.rand(2000, 16, generator=g) * 1.6 - 0.3) * theta
    n = simulate_constant(x, theta, T=L)
    ann = torch.stack([qcfs(x[:, c], theta[c].reshape(1), L) for c in range(16)], 1)
    near = ((x * L / theta + 0.5) - torch.round(x * L / theta + 0.5)).abs() < 1e-4  # float32 rounding zone
    assert near.float().mean() < 0.01
    assert torch.allclose((n * theta / L)[~near], ann[~near], atol=1e-5)


def test_reset_by_subtraction_keeps_the_residual():
    v = torch.tensor([0.5, 0.5, 0.5])
    s, m, v_next = if_step(v, torch.tensor([0.2, 0.5, 1.9]), torch.tensor(1.0))
    assert s.tolist() == [0.0, 1.0, 1.0]
    assert m.tolist() == pytest.approx([0.7, 1.0, 2.4])
    assert v_next.tolist() == pytest.approx([0.7, 0.0, 1.4])  # one spike per step: the excess carries over


def test_charge_is_conserved_over_time():
    """theta * spikes + v(T) = v0 + sum of inputs, for any input sequence (reset by subtraction)."""
    g = torch.Generator().manual_seed(0)
    T, B, C = 12, 64, 5
    theta = torch.rand(C, generator=g) + 0.5
    seq = torch.randn(T, B, C, generator=g)
    ctx = SimContext()
    ctx.batch, ctx.chunk, ctx.total_steps = B, T, T
    neuron = IFNeuron(NeuronSpec(theta, v0_frac=0.5), ctx)
    out = neuron(seq.reshape(T * B, C)).view(T, B, C)
    assert torch.allclose(out.sum(0) + neuron.v, theta / 2 + seq.sum(0), atol=1e-4)
    assert set(torch.unique(out / theta).tolist()) <= {0.0, 1.0}


def test_bias_is_subtracted_per_channel_per_step():
    ctx = SimContext()
    ctx.batch, ctx.chunk, ctx.total_steps = 1, 3, 3
    neuron = IFNeuron(NeuronSpec(torch.tensor(1.0), v0_frac=0.0), ctx)
    neuron.set_bias(torch.tensor([[0.0, 0.5], [0.5, 0.0], [0.0, 0.0]]))  # [T, C]
    out = neuron(torch.full((1, 2), 0.6)).view(3, 2)  # v: c0 0.6, 0.7, 1.3->fire; c1 0.1, 0.7, 1.3->fire
    assert out.tolist() == [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    with pytest.raises(RuntimeError, match="calibrated for 3 steps"):
        ctx.chunk, ctx.total_steps = 4, 4
        neuron.reset()
        neuron(torch.zeros(1, 2))


@pytest.mark.parametrize("shift_per_step", [False, True])
def test_controller_step_is_the_fused_step_bit_for_bit(shift_per_step):
    """IFNeuron.step (used by FTBC's re-fire and COS's pre-simulation) rounds exactly like the fused in-place step
    the deployed network runs, so a calibration trajectory is the deployed one, spike for spike."""

    class Passive(Controller):  # a controller that changes nothing: forces the IFNeuron.step path
        def on_step(self, neuron, t, current, v_prev, m, s):
            return m, s

    gen = torch.Generator().manual_seed(0)
    T, B, C = 16, 8, 5
    x = torch.randn(T * B, C, 3, 3, generator=gen)
    theta, bias = torch.rand(C, generator=gen) + 0.5, torch.randn(T, C, generator=gen) * 0.3
    outs = []
    for controller in (None, Passive()):
        ctx = SimContext()
        ctx.batch, ctx.chunk, ctx.total_steps = B, T, T
        neuron = IFNeuron(NeuronSpec(theta, v0_frac=0.5, shift_per_step=shift_per_step), ctx)
        neuron.set_bias(bias)
        neuron.controllers = (controller,) if controller is not None else ()
        outs.append((neuron(x), neuron.v.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("controller", [False, True])
def test_membrane_stays_fp32_with_bf16_inputs(controller):
    """Under an autocast the layer input arrives in bf16: the membrane (and the reset by theta) stays fp32, so the
    spikes equal an fp32 simulation of the same (bf16-rounded) currents; only the output is rounded to bf16."""
    from snnconv.snn.neuron import Controller

    class Watch(Controller):  # takes the per-step path (re-fire hook) without changing anything
        def on_step(self, neuron, t, current, v_prev, m, s):
            return m, s

    g = torch.Generator().manual_seed(0)
    theta = torch.tensor([0.3, 0.7, 1.1])  # not representable in bf16: a bf16 reset would drift
    x = (torch.rand(4, 6, 3, generator=g) * 0.9).to(torch.bfloat16)  # [T, B, C], 4 steps
    runs = {}
    for dtype in (torch.bfloat16, torch.float32):
        ctx = SimContext()
        ctx.batch, ctx.chunk, ctx.total_steps = 6, 4, 4
        neuron = IFNeuron(NeuronSpec(theta), ctx)
        neuron.controllers = (Watch(),) if controller else ()
        out = neuron(x.to(dtype).reshape(24, 3))
        assert neuron.v.dtype == torch.float32 and out.dtype == dtype
        runs[dtype] = (out.float(), neuron.v.clone())
    spikes_bf16 = (runs[torch.bfloat16][0] > 0)
    assert torch.equal(spikes_bf16, runs[torch.float32][0] > 0) and spikes_bf16.any()
    assert torch.equal(runs[torch.bfloat16][1], runs[torch.float32][1])  # the same fp32 membrane, bit for bit
    torch.testing.assert_close(runs[torch.bfloat16][0], runs[torch.float32][0], rtol=2**-8, atol=0)  # bf16 output
