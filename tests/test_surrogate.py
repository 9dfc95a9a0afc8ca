"""The spike's local gradient (LocalZO and surrogates) and the differentiable IF step: closed forms, Monte-Carlo
expectation, exact sparsity, detached reset, and the fine-tune path equal to the evaluation simulation bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from nets import images, random_ann
from snnconv.ann.base import NeuronSpec
from snnconv.snn import IFNeuron, SimContext, convert
from snnconv.snn.surrogate import (
    BackwardSparsity,
    LocalZO,
    Surrogate,
    TrainingSpike,
    expected_localzo,
    spike,
)

DELTA = 0.5


def local_grad(rule, m, theta):
    """(dL/dm, dL/dtheta) of L = sum(spike(m, theta)) for leaf copies of m and theta."""
    m = m.clone().requires_grad_(True)
    theta = theta.clone().requires_grad_(True)
    spike(m, theta, rule).sum().backward()
    return m.grad, theta.grad


def test_spike_forward_is_the_heaviside_of_the_if_step():
    m = torch.tensor([-1.0, 0.999, 1.0, 1.001, 3.0])
    s = spike(m, torch.tensor(1.0), Surrogate("gauss"))
    assert s.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0] and s.dtype == m.dtype


def test_gauss_backward_equals_its_closed_form():
    """g(u) = exp(-u^2 / (2 delta^2)) / (delta sqrt(2 pi)), dL/dm = g / theta, written out here by hand."""
    g = torch.Generator().manual_seed(0)
    theta = (torch.rand(4, generator=g) * 3 + 0.5).view(4, 1)  # per-channel thresholds, [C, 1]
    m = torch.randn(4, 1000, generator=g) * 2 * theta
    grad_m, _ = local_grad(Surrogate("gauss", DELTA), m, theta)
    u = (m - theta) / theta
    closed = torch.exp(-(u**2) / (2 * DELTA**2)) / (DELTA * math.sqrt(2 * math.pi)) / theta
    torch.testing.assert_close(grad_m, closed, rtol=1e-6, atol=0)
    assert grad_m.max() * theta.min() <= 1 / (DELTA * math.sqrt(2 * math.pi)) + 1e-6  # peak 0.80 at delta = 0.5


@pytest.mark.parametrize(
    "shape,primitive",
    [
        ("gauss", lambda u: 0.5 * (1 + torch.erf(u / (DELTA * math.sqrt(2))))),
        ("sigmoid", lambda u: torch.sigmoid(math.sqrt(1 / 0.4262) / DELTA * u)),
        ("atan", lambda u: torch.atan(math.pi / 2 * (2 / (DELTA * math.sqrt(2 * math.pi))) * u) / math.pi + 0.5),
    ],
)
def test_surrogate_gradients_in_m_and_theta_are_those_of_its_smooth_step(shape, primitive):
    """Each surrogate is the exact derivative of a smooth step S(u), u = m/theta - 1: the spike's backward (in m
    AND in theta, the latter from u's dependence on theta) equals autograd through S(m/theta - 1)."""
    g = torch.Generator().manual_seed(1)
    theta = torch.rand(3, 1, generator=g) * 2 + 0.5
    m = torch.randn(3, 500, generator=g).double() * theta
    theta = theta.double()
    grad_m, grad_theta = local_grad(Surrogate(shape, DELTA), m, theta)
    m_ref, theta_ref = m.clone().requires_grad_(True), theta.clone().requires_grad_(True)
    primitive(m_ref / theta_ref - 1).sum().backward()
    torch.testing.assert_close(grad_m, m_ref.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_theta, theta_ref.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dist", ["normal", "uniform", "laplace"])
def test_closed_forms_integrate_to_one(dist):
    u = torch.linspace(-20 * DELTA, 20 * DELTA, 400001, dtype=torch.float64)
    area = torch.trapezoid(expected_localzo(u, DELTA, dist), u)
    assert abs(float(area) - 1) < 1e-6


@pytest.mark.parametrize("dist", ["normal", "uniform", "laplace"])
def test_mean_of_localzo_backward_calls_matches_the_closed_form(dist):
    """Mean over N = 400 backward calls (M = 5 draws each, 50 copies of each u per call: 20,000 estimates per u)
    of g(u), on a grid of u over [-3 delta, 3 delta]; the bound is 4 standard errors of that mean (estimated from
    the draws), i.e. a false alarm below 1e-4 per grid point, deterministic for the seeded generator."""
    rule = LocalZO(DELTA, samples=5, dist=dist, generator=torch.Generator().manual_seed(7))
    theta = torch.tensor(1.5)
    u = torch.linspace(-3 * DELTA, 3 * DELTA, 25)
    m = ((u + 1) * theta).expand(50, -1).contiguous()
    calls = torch.stack([local_grad(rule, m, theta)[0] * theta for _ in range(400)]).flatten(0, 1)  # [N*50, 25]
    mean, sem = calls.mean(0), calls.std(0) / math.sqrt(calls.shape[0])
    closed = expected_localzo(u, DELTA, dist)
    assert ((mean - closed).abs() <= 4 * sem + 1e-6).all(), (mean - closed).abs().max()
    assert (sem[closed > 0.1] < 0.01).all()  # the test has power: the bound is tight where g is not tiny


@pytest.mark.parametrize("dist", ["normal", "uniform", "laplace"])
def test_localzo_gradient_is_exactly_zero_outside_delta_max_z(dist):
    """The draws are replayed from a generator in the same state: g = 0 exactly where |u| >= delta max_j |z_j|,
    and elsewhere equals mean_j |z_j| / (2 delta) 1[|u| < delta |z_j|] > 0."""
    M, theta = 3, torch.tensor(2.0)
    u = torch.randn(200, 30, generator=torch.Generator().manual_seed(3))
    rule = LocalZO(DELTA, samples=M, dist=dist, generator=torch.Generator().manual_seed(11))
    grad_m, _ = local_grad(rule, (u + 1) * theta, theta)
    g = grad_m * theta
    u = ((u + 1) * theta - theta) / theta  # the u the backward sees (rounded as it computes it)
    replay = LocalZO(DELTA, samples=M, dist=dist, generator=torch.Generator().manual_seed(11))
    z = replay.draw_abs((M, *u.shape), u.device)
    outside = u.abs() / DELTA >= z.max(0).values  # |u| >= delta max|z|, with the rule's rounding
    assert outside.float().mean() > 0.2 and (~outside).float().mean() > 0.05
    assert torch.equal(g[outside], torch.zeros_like(g[outside]))
    assert (g[~outside] > 0).all()
    expected = (z * (u.abs() / DELTA < z)).mean(0) / (2 * DELTA)
    torch.testing.assert_close(g, expected, rtol=1e-6, atol=0)


def test_sparsity_counter_counts_zero_local_gradients():
    sparsity = BackwardSparsity()
    rule = LocalZO(DELTA, samples=1, generator=torch.Generator().manual_seed(0))
    m = (torch.randn(10000, generator=torch.Generator().manual_seed(1)) + 1).requires_grad_(True)
    spike(m, torch.tensor(1.0), rule, sparsity, "layer").sum().backward()
    assert sparsity.total["layer"] == 10000
    assert int(sparsity.zero["layer"]) == int((m.grad == 0).sum())
    # one Gaussian draw, u ~ N(0, 1): P(g != 0) = P(|z| > |u| / delta) = 2/pi * atan(delta) = 0.295
    assert abs(sparsity.share("layer") - (1 - 2 / math.pi * math.atan(DELTA))) < 0.015


@pytest.mark.parametrize("detach", [True, False])
def test_detached_reset_removes_the_reset_gradient(detach):
    """Two steps of one neuron, L = s(1): m0 = v0 + I0, v1 = m0 - theta s0, m1 = v1 + I1. Through the reset,
    dL/dI0 = g(u1)/theta * (1 - g(u0)); with the reset detached only the membrane path is left: g(u1)/theta."""
    theta = 1.25
    ctx = SimContext()
    ctx.batch, ctx.chunk, ctx.total_steps = 1, 2, 2
    neuron = IFNeuron(NeuronSpec(torch.tensor(theta), v0_frac=0.5), ctx)
    rule = Surrogate("gauss", DELTA)
    ctx.train = TrainingSpike(rule, detach_reset=detach)
    current = torch.tensor([[0.9], [0.2]], requires_grad=True)  # [T*B, 1]
    out = neuron(current)
    out[1].sum().backward()
    m0 = 0.5 * theta + 0.9
    m1 = m0 - theta * float(m0 >= theta) + 0.2
    g = lambda m: float(rule(torch.tensor((m - theta) / theta)))  # noqa: E731
    # output theta * s1: d/dm1 = theta * g(u1) / theta = g(u1)
    expected_i1 = g(m1)
    expected_i0 = g(m1) * (1 if detach else 1 - g(m0))
    assert current.grad[1].item() == pytest.approx(expected_i1, rel=1e-6)
    assert current.grad[0].item() == pytest.approx(expected_i0, rel=1e-6)
    assert expected_i0 != pytest.approx(g(m1) * (1 - g(m0)) if detach else g(m1))  # the two cases differ


@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
@pytest.mark.parametrize("grad", [False, True])
def test_finetune_path_equals_the_evaluation_simulation_bit_for_bit(arch, grad):
    """Same network (with per-step FTBC-style biases), T = 5, chunks 1 / 2 / 5: the out-of-place differentiable
    path gives exactly the fused in-place simulation's outputs, with gradients off and on."""
    snn = convert(random_ann(arch), images(1, 0))
    gen = torch.Generator().manual_seed(5)
    for neuron in snn.neurons().values():
        neuron.set_bias(torch.randn(5, 1, generator=gen) * 0.05)
    x = images(4, 9)
    T = 5
    with torch.no_grad():
        reference = snn(x, T, 1)
    train = TrainingSpike(LocalZO(DELTA, generator=torch.Generator().manual_seed(0)))
    for chunk in (1, 2, 5):
        with torch.set_grad_enabled(grad), snn.differentiable(train):
            out = snn(x, T, chunk)
        assert out.requires_grad == grad
        assert torch.equal(out.detach(), reference)
    assert snn.ctx.train is None  # the context manager restores the evaluation path
