"""FTBC (forward temporal bias correction): the one-pass streaming calibration against the references' per-layer
re-simulation, causality / truncation in T, the Proposition's root on a single layer, persistence, the prefix
property, the rts per_step refusal, and the FTBC + COS combination.

Networks: small random VGG16 / ResNet-20 (eval mode, randomised BN statistics, thresholds = 95th percentile of
each layer's ANN input) so that every layer has non-trivial rates. Biases beta [T_max, C] are SUBTRACTED.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from nets import images
from nets import random_ann as _ann
from snnconv import SnnconvError
from snnconv.ann.base import NeuronSpec, SourceActivation
from snnconv.evaluate import evaluate
from snnconv.methods import build_method
from snnconv.methods.baseline import Baseline
from snnconv.methods.ftbc import FTBC, FTBCController, channel_mean
from snnconv.methods.ftbc_offset_spike import FTBCOffsetSpike
from snnconv.methods.offset_spike import OffsetSpike
from snnconv.methods.reference import naive_calibrate
from snnconv.snn import convert


def cfg(**kw):
    base = dict(name="ftbc", alpha=0.5, iterations=2, update="residual", rho=4, passes=1, eps=0.001)
    base.update(kw)
    return SimpleNamespace(**base)

def build(arch="vgg16", source="qcfs"):
    """(ann, fresh snn) — every call converts again, so tests never share biases."""
    ann = _ann(arch, source)
    return ann, convert(ann, images(1, 100))


def biases(snn):
    return {n: neuron.bias.clone() for n, neuron in snn.neurons().items()}


def assert_biases_close(a, b, atol):
    assert list(a) == list(b)
    for n in a:
        assert a[n].shape == b[n].shape, n
        assert torch.allclose(a[n], b[n], atol=atol, rtol=0), (n, (a[n] - b[n]).abs().max())


# -------------------------------------------------------------------------- 1. streaming == per-layer reference
@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
@pytest.mark.parametrize("update", ["residual", "oracle"])
@pytest.mark.parametrize("chunk", [1, 4])
def test_streaming_equals_naive_per_layer_resimulation(arch, update, chunk):
    T = 4
    ann, snn = build(arch)
    batches = [images(4, 1), images(4, 2)]
    FTBC(cfg(update=update)).calibrate(snn, ann, batches, T, chunk)
    streamed = biases(snn)
    ref = naive_calibrate(snn, ann, batches, T, chunk, alpha=0.5, iterations=2, update=update)
    assert_biases_close(streamed, ref, 1e-5)
    n_layers = 15 if arch == "vgg16" else 19
    assert len(streamed) == n_layers
    for name, b in streamed.items():  # not vacuous: every layer, every step got a correction
        assert b.shape[0] == T and (b.abs().sum(1) > 0).all(), name
    if chunk == 4:  # the time chunk does not change the result (3: chunks of 3 + 1 steps)
        for other in (1, 3):
            FTBC(cfg(update=update)).calibrate(snn, ann, batches, T, other)
            assert_biases_close(biases(snn), streamed, 1e-5)


@pytest.mark.parametrize("source", ["relu", "rts:initial"])
def test_streaming_equals_naive_other_sources(source):
    ann, snn = build("resnet20", source)
    batches = [images(4, 3)]
    FTBC(cfg(iterations=2)).calibrate(snn, ann, batches, 4, 1)
    ref = naive_calibrate(snn, ann, batches, 4, 1, alpha=0.5, iterations=2)
    assert_biases_close(biases(snn), ref, 1e-5)
    assert sum(float(b.abs().sum()) for b in ref.values()) > 0


def test_without_refire_the_streaming_pass_is_not_exact(monkeypatch):
    """Negative control: if a layer kept its uncorrected spikes (no re-fire), downstream layers would be
    calibrated on a trajectory the deployed network never follows: the equality above is not automatic."""
    ann, snn = build("vgg16")
    batches = [images(4, 1)]
    ref = naive_calibrate(snn, ann, batches, 4, 1, alpha=0.5, iterations=1)
    original = FTBCController.step

    def no_refire(self, neuron, t, current, m, s, v_prev):
        original(self, neuron, t, current, m, s, v_prev)  # updates beta[t] ...
        return m, s, m - neuron.threshold_view(m.dim()) * s  # ... but keeps the old spikes

    monkeypatch.setattr(FTBCController, "step", no_refire)
    FTBC(cfg(iterations=1)).calibrate(snn, ann, batches, 4, 1)
    got = biases(snn)
    first = next(iter(got))
    assert torch.equal(got[first][0], ref[first][0])  # step 0 of layer 1 sees no corrected state yet
    assert any(not torch.allclose(got[n], ref[n], atol=1e-5) for n in got)


# ------------------------------------------------------------------------------- 2 + 6. causality in T
def test_qcfs_biases_at_T_max_truncate_to_biases_at_T():
    ann, snn = build("resnet20")
    batches = [images(4, 4), images(4, 5)]
    method = FTBC(cfg())
    method.calibrate(snn, ann, batches, 8, 1)
    b8 = biases(snn)
    method.calibrate(snn, ann, batches, 4, 1)  # starts again from zeros
    b4 = biases(snn)
    assert_biases_close({n: b[:4] for n, b in b8.items()}, b4, 1e-6)
    assert all(not torch.allclose(b[4:], torch.zeros_like(b[4:])) for b in b8.values())


def test_causality_perturbing_steps_after_t0_leaves_earlier_biases():
    """beta_l[t] may only depend on steps <= t: perturb the first layer's input at steps > t0 (every layer's
    input downstream changes there) and check every layer's beta[<= t0]; also T_max = 8 vs 6 (rts, v0 = theta/2)."""
    ann, snn = build("vgg16", "rts:initial")
    batches = [images(4, 6), images(4, 7)]
    T, t0 = 8, 3
    method = FTBC(cfg())
    method.calibrate(snn, ann, batches, T, 1)
    clean = biases(snn)
    method.calibrate(snn, ann, batches, 6, 1)
    assert_biases_close({n: b[:6] for n, b in clean.items()}, biases(snn), 1e-6)

    first = next(iter(snn.neurons().values()))
    gen = torch.Generator().manual_seed(0)

    def perturb(neuron, args):
        seq = neuron.unfold(args[0])  # [k, B, ...] steps neuron.t .. neuron.t + k - 1
        steps = torch.arange(neuron.t, neuron.t + seq.shape[0]).view(-1, *[1] * (seq.dim() - 1))
        noise = torch.randn(seq.shape, generator=gen) * (steps > t0)
        return ((seq + noise).reshape(-1, *seq.shape[2:]),)

    handle = first.register_forward_pre_hook(perturb)
    try:
        for chunk in (1, T):
            method.calibrate(snn, ann, batches, T, chunk)
            perturbed = biases(snn)
            assert_biases_close(
                {n: b[: t0 + 1] for n, b in perturbed.items()},
                {n: b[: t0 + 1] for n, b in clean.items()},
                1e-5,
            )
            assert all(not torch.allclose(perturbed[n][t0 + 1 :], clean[n][t0 + 1 :]) for n in clean)
    finally:
        handle.remove()


# ------------------------------------------------------------------------ 3. Proposition on a single layer
class TargetAct(SourceActivation):
    """An 'ANN activation' that outputs a fixed per-channel target; its SNN is an IF neuron, theta = 1, v0 = 1/2."""

    def __init__(self, target):
        super().__init__()
        self.register_buffer("target", target)

    def forward(self, x):
        return self.target.expand_as(x)

    def neuron_spec(self):
        return NeuronSpec(threshold=torch.tensor(1.0), v0_frac=0.5)


def test_single_layer_converges_to_the_propositions_bias():
    """Currents I ~ U[lo_c, hi_c] i.i.d. per sample (constant over t), target rate a_c. The residual rule is a
    Robbins-Monro search for the root of g(beta) = P(m - beta >= theta) - a: the per-step rate error falls with
    the iterations, and beta[0] reaches the Proposition's unique root b* = -beta[0] with
    P(1/2 + I + b* >= 1) = a, i.e. beta[0] = hi - a (hi - lo) - 1/2 for the uniform law."""
    C, B, T = 4, 4096, 8
    lo = torch.tensor([0.0, -0.2, 0.3, -0.5])
    hi = torch.tensor([0.5, 1.0, 1.2, 0.8])
    target = torch.tensor([0.2, 0.5, 0.7, 0.35])
    gen = torch.Generator().manual_seed(0)
    draw = lambda: lo + (hi - lo) * torch.rand(B, C, generator=gen)  # noqa: E731
    batches, fresh = [draw(), draw()], draw()
    ann = nn.Sequential(TargetAct(target))
    snn = convert(ann, batches[0][:1])

    def rate_error(x):
        with torch.no_grad():
            return (snn(x, T, 1).mean(1) - target).abs()  # [T, C]: |per-step channel rate - target|

    uncalibrated = rate_error(batches[0]).max()
    errors = []
    for iterations in (1, 3, 10, 40):
        diag = FTBC(cfg(iterations=iterations)).calibrate(snn, ann, batches, T, 1)
        errors.append(float(torch.cat([rate_error(x) for x in batches]).max()))
    assert uncalibrated > 0.1
    assert errors[0] > errors[1] > errors[2] and errors[3] <= errors[2] + 0.003
    assert errors[-1] < 0.02 and float(rate_error(fresh).max()) < 0.03  # also on unseen samples
    per_iter = diag["mean_abs_delta_per_iteration"]
    assert per_iter[0] > 5 * per_iter[-1]
    root = hi - target * (hi - lo) - 0.5
    beta0 = snn.neurons()["0"].bias[0]
    assert torch.allclose(beta0, root, atol=0.02 * float((hi - lo).max())), (beta0, root)

    # the oracle rule (QCFS tree) integrates the raw current and ignores beta: on one layer its increments do
    # not depend on the biases, so K passes give K times the one-pass bias (the overshoot the spec describes)
    FTBC(cfg(update="oracle", iterations=1)).calibrate(snn, ann, batches, T, 1)
    once = snn.neurons()["0"].bias.clone()
    FTBC(cfg(update="oracle", iterations=3)).calibrate(snn, ann, batches, T, 1)
    assert torch.allclose(snn.neurons()["0"].bias, 3 * once, atol=1e-5)


# ---------------------------------------------------------------- 4 + 5. persistence and the prefix property
def test_biases_survive_state_dict_round_trip():
    ann, snn = build("resnet20")
    FTBC(cfg(iterations=1)).calibrate(snn, ann, [images(4, 8)], 6, 1)
    buf = io.BytesIO()
    torch.save(snn.state_dict(), buf)
    buf.seek(0)
    fresh = convert(ann, images(1, 100))
    x = images(4, 9)
    with torch.no_grad():
        before = fresh(x, 6, 1)
        fresh.load_state_dict(torch.load(buf))
        assert_biases_close(biases(fresh), biases(snn), 0)
        out, ref = fresh(x, 6, 1), snn(x, 6, 1)
    assert torch.equal(out, ref)
    assert not torch.allclose(out, before)  # the biases matter


def test_calibrated_prefix_property_and_evaluate():
    ann, snn = build("vgg16")
    method = FTBC(cfg(iterations=1))
    method.calibrate(snn, ann, [images(4, 10)], 8, 1)
    x = images(6, 11)
    with torch.no_grad():
        out8, out4 = snn(x, 8, 1), snn(x, 4, 1)
        assert torch.equal(out8[:4], out4)
        assert torch.allclose(snn(x, 8, 8)[:4], snn(x, 4, 4), atol=1e-5, rtol=0)
        with pytest.raises(RuntimeError, match="bias calibrated for 8 steps"):
            snn(x, 9, 1)
    loader = [(x, torch.arange(6) % 10)]
    alone = evaluate(snn, ann, loader, [4], method, torch.device("cpu"), 1, progress=False)
    sweep = evaluate(snn, ann, loader, [2, 4, 8], method, torch.device("cpu"), 1, progress=False)
    assert alone["agreement"]["4"] == sweep["agreement"]["4"]


# ------------------------------------------------------------------------------------ 7. rts per_step
def test_rts_per_step_is_refused_with_the_fix_named():
    ann, snn = build("vgg16", "rts:per_step")
    with pytest.raises(SnnconvError, match="rts_shift=initial"):
        FTBC(cfg()).calibrate(snn, ann, [images(2, 12)], 4, 1)
    with pytest.raises(SnnconvError, match="rts_shift=initial"):
        naive_calibrate(snn, ann, [images(2, 12)], 4, 1, 0.5)


# ----------------------------------------------------------------------------- effect, protocol, combination
def per_step_rate_error(snn, ann, x, T, method) -> float:
    """Mean over layers, steps and channels of |mean_c(SNN output at t) - mean_c(ANN activation)| on x."""
    acts = {n: m for n, m in ann.named_modules() if isinstance(m, SourceActivation)}
    targets, outs = {}, {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, a, n=n: targets.__setitem__(n, channel_mean(a)))
        for n, m in acts.items()
    ]
    hooks += [
        m.register_forward_hook(lambda _m, _i, o, n=n: outs.setdefault(n, []).append(o))
        for n, m in snn.neurons().items()
    ]
    method.attach(snn)
    steps = method.sim_steps(T)
    with torch.no_grad():
        ann(x)
        snn(x, steps, steps)
    for h in hooks:
        h.remove()
    for neuron in snn.neurons().values():
        neuron.controllers = ()
    errs = []
    for n, chunks in outs.items():
        seq = torch.cat(chunks).view(steps, x.shape[0], *chunks[0].shape[1:])
        errs += [float((channel_mean(seq[t]) - targets[n]).abs().mean()) for t in range(T)]
    return sum(errs) / len(errs)


def test_calibration_reduces_per_step_error_on_unseen_images():
    ann, snn = build("vgg16")
    batches, test = [images(8, 13), images(8, 14), images(8, 15)], images(16, 16)
    T = 8
    plain = per_step_rate_error(snn, ann, test, T, Baseline())
    cos = per_step_rate_error(snn, ann, test, T, OffsetSpike(cfg()))
    FTBC(cfg(iterations=3)).calibrate(snn, ann, batches, T, 1)
    ftbc = per_step_rate_error(snn, ann, test, T, Baseline())
    both_method = FTBCOffsetSpike(cfg(iterations=3))
    both_method.calibrate(snn, ann, batches, T, 1)
    both = per_step_rate_error(snn, ann, test, T, both_method)
    print(f"per-step error: plain {plain:.4f} ftbc {ftbc:.4f} cos {cos:.4f} ftbc+cos {both:.4f}")
    assert ftbc < 0.75 * plain and both < 0.75 * cos


def test_protocol_diagnostics_and_clean_state():
    ann, snn = build("vgg16")
    modes = [m.training for m in snn.modules()] + [m.training for m in ann.modules()]
    method = build_method(SimpleNamespace(**vars(cfg(name="ftbc", iterations=2))))
    assert isinstance(method, FTBC) and method.name == "ftbc" and method.first_chunk == 0
    assert method.sim_steps(8) == 8 and method.latency(8, 15) == {"latency_steps": 8}
    diag = method.calibrate(
        snn, ann, (x for x in [images(4, 17), images(4, 18)]), 6, 2
    )  # a generator is fine
    assert json.loads(json.dumps(diag)) == diag == method.diagnostics()
    assert (diag["batches"], diag["iterations"], diag["alpha"], diag["update"]) == (2, 2, 0.5, "residual")
    assert diag["seconds"] > 0 and len(diag["mean_abs_delta_per_iteration"]) == 2
    assert list(diag["layers"]) == list(snn.neurons())
    for name, neuron in snn.neurons().items():
        layer = diag["layers"][name]
        assert neuron.controllers == ()
        assert neuron.bias.shape == (6, layer["channels"])
        assert (
            abs(layer["bias_norm"] - float(neuron.bias.norm())) < 1e-5
            and len(layer["mean_abs_delta_per_t"]) == 6
        )
    assert [n.bias.shape[1] for n in snn.neurons().values()] == [
        8,
        8,
        16,
        16,
        32,
        32,
        32,
        64,
        64,
        64,
        64,
        64,
        64,
        512,
        512,
    ]
    assert [m.training for m in snn.modules()] + [m.training for m in ann.modules()] == modes
    first = biases(snn)
    method.calibrate(snn, ann, [images(4, 17), images(4, 18)], 6, 2)  # restarts from zeros: same result
    assert_biases_close(biases(snn), first, 0)
    with pytest.raises(SnnconvError):
        FTBC(cfg(update="bogus"))


def test_ftbc_offset_spike_protocol_and_T_below_rho():
    method = build_method(
        SimpleNamespace(**vars(cfg(name="ftbc_offset_spike", rho=4, passes=2, iterations=1)))
    )
    cos = OffsetSpike(cfg(rho=4, passes=2))
    assert (
        isinstance(method, FTBCOffsetSpike)
        and method.name == "ftbc_offset_spike"
        and method.first_chunk == 4
    )
    for T in (1, 4, 16):
        assert method.sim_steps(T) == cos.sim_steps(T) and method.latency(T, 15) == cos.latency(T, 15)
    ann, snn = build("resnet20")
    diag = method.calibrate(snn, ann, [images(4, 19)], 2, 1)  # T_max = 2 < rho: biases cover the rho steps
    for neuron in snn.neurons().values():
        assert neuron.bias.shape[0] == 4 and neuron.controllers == ()
    assert diag["steps"] == 4
    loader = [(images(4, 20), torch.arange(4))]
    res = evaluate(snn, ann, loader, [1, 2], method, torch.device("cpu"), 1, progress=False)
    assert set(res["acc"]) == {"1", "2"}
    out = json.loads(json.dumps(method.diagnostics()))
    assert (
        out["ftbc"]["steps"] == 4
        and out["offset_spike"]["psi_mse_after"] <= out["offset_spike"]["psi_mse_before"]
    )


def test_ftbc_offset_spike_calibration_does_not_depend_on_the_chunk():
    """Only the first rho steps must share a chunk (COS pre-simulation); the biases are the same either way."""
    ann, snn_a = build("vgg16")
    _, snn_b = build("vgg16")
    batches = [images(4, 31), images(4, 32)]
    FTBCOffsetSpike(cfg(name="ftbc_offset_spike")).calibrate(snn_a, ann, batches, 8, 8)
    FTBCOffsetSpike(cfg(name="ftbc_offset_spike")).calibrate(snn_b, ann, batches, 8, 1)
    assert_biases_close(biases(snn_a), biases(snn_b), atol=1e-5)
    assert any(b.abs().sum() > 0 for b in biases(snn_a).values())
