"""Spike statistics and SOPs (snnconv.stats): hand-counted networks, the exact rule against SpikingJelly's
conv-with-ones rule and against nnz x fan-out, a by-hand reference on ResNet-20, prefixes of one run = separate
runs, and the energy arithmetic."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nets import images, random_ann
from snnconv import SnnconvError
from snnconv.ann.qcfs import QCFS
from snnconv.snn import convert
from snnconv.stats import ENERGY_PRESETS, SpikeCounter, build_plan

act = functools.partial(QCFS, L=4, init_threshold=1.0)


class Tiny(nn.Module):
    """x [B,1,4,4] -> conv1x1 (static, 2 ch) -> act0 -> conv3x3 p1 (3 ch) -> act1 -> avgpool2 -> conv3x3 p1 (4 ch)
    -> act2 -> flatten -> linear 16 -> 5."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 2, 1, bias=False)
        self.act0 = act()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.act1 = act()
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.act2 = act()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 5)
        with torch.no_grad():
            self.conv0.weight.fill_(1.0)  # act0 gets x: fires at every step where x = 1, never where x = 0
            self.conv1.weight.zero_()
            self.conv1.bias.fill_(1.0)  # act1: current 1 -> every neuron fires at every step
            self.conv2.weight.zero_()
            self.conv2.bias.fill_(0.5)  # act2: v0 = 0.5, +0.5 per step -> fires at steps 1, 3, 5, ...

    def forward(self, x):
        x = self.act1(self.conv1(self.act0(self.conv0(x))))
        x = self.act2(self.conv2(self.pool(x)))
        return self.fc(self.flat(x))


X_TINY = torch.zeros(1, 1, 4, 4)
X_TINY[0, 0, 0, 0] = X_TINY[0, 0, 0, 1] = X_TINY[0, 0, 1, 1] = X_TINY[0, 0, 2, 2] = 1.0  # corner, edge, 2 inside


def count(ann, x, T_list, snn=None, plan=None):
    """SpikeCounter over one simulation of max(T_list) steps, read at every T in T_list."""
    plan = plan or build_plan(ann, x[:1])
    snn = snn or convert(ann, x[:1])
    counter = SpikeCounter(plan)
    with counter.attached(snn, ann), torch.no_grad():
        ann(x)
        counter.begin(T_list, x.shape[0])
        out = snn(x, max(T_list), 1)
    return counter.summary(), out


def layer(summary, name):
    return next(r for r in summary["per_layer"] if r["name"] == name)


def test_tiny_plan_fanouts_are_the_hand_counted_ones():
    plan = build_plan(Tiny().eval(), X_TINY)
    f0 = plan.layers["act0"].routes[0].full((2, 4, 4))  # windows of a 3x3 pad-1 conv x 3 output channels
    windows = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float32)
    assert torch.equal(f0, (3 * windows).expand(2, 4, 4))
    assert plan.layers["act0"].routes[0].fanout.shape == (1, 4, 4)  # stored once for all channels
    f1 = plan.layers["act1"].routes[0].full((3, 4, 4))  # pooled 2x2 map, 3x3 pad 1: every cell reaches all 4 outputs
    assert torch.equal(f1, torch.full((3, 4, 4), 16.0))
    assert torch.equal(plan.layers["act2"].routes[0].full((4, 2, 2)), torch.full((4, 2, 2), 5.0))
    assert [r.target for r in plan.layers["act2"].routes] == ["output"]
    assert plan.mac_first == 2 * 16 and plan.mac_ann == 32 + 3 * 16 * 2 * 9 + 4 * 4 * 3 * 9 + 16 * 5
    assert plan.layers["act0"].static_input and not plan.layers["act0"].input_bias
    assert plan.layers["act1"].input_bias and plan.output_bias


def test_tiny_network_counts_are_exact_at_every_T():
    summary, _ = count(Tiny().eval(), X_TINY, [1, 2, 3, 4, 7])
    for T in (1, 2, 3, 4, 7):
        k = str(T)
        odd = (T + 1) // 2  # act2 fires at steps 1, 3, 5, ...
        assert layer(summary, "act0")["spikes"][k] == 2 * 4 * T
        assert layer(summary, "act0")["sops"][k] == 2 * 3 * (4 + 6 + 9 + 9) * T
        assert layer(summary, "act1")["spikes"][k] == 48 * T
        assert layer(summary, "act1")["sops"][k] == 48 * 16 * T
        assert layer(summary, "act2")["spikes"][k] == 16 * odd
        assert layer(summary, "act2")["sops"][k] == 16 * 5 * odd
        assert summary["total_sops"][k] == (168 + 768) * T + 80 * odd
        assert summary["firing_rate"][k] == round((8 * T + 48 * T + 16 * odd) / (96 * T), 6)
        assert layer(summary, "act0")["bias_acs"][k] == 0  # static current: its bias is in the memoised MACs
        assert layer(summary, "act1")["bias_acs"][k] == 48 * T
        assert summary["output_acs"][k] == 2 * 5 * T  # bias + accumulation of the logits
        e_mac, e_ac = ENERGY_PRESETS["fp32-45nm"]
        e = summary["energy_pj"][k]
        assert e["snn"] == pytest.approx(e_mac * 32 + e_ac * summary["total_sops"][k], abs=0.06)
        assert e["ann"] == pytest.approx(e_mac * 1408, abs=0.06)
        assert e["ratio"] == pytest.approx(e["snn"] / e["ann"], rel=1e-4)
    assert summary["caveat"].startswith("energy: compute-only, no memory traffic")


def _one_layer(pool: int, conv: nn.Conv2d, C: int, H: int) -> nn.Module:
    """static conv -> act -> [avgpool] -> conv -> act."""
    return nn.Sequential(
        nn.Conv2d(1, C, 1), act(), *([nn.AvgPool2d(pool)] if pool else []), conv, act()
    ).eval()


CONVS = [  # (in, out, kernel, stride, padding, dilation, groups)
    (4, 6, 3, 1, 1, 1, 1),
    (4, 6, 3, 2, 1, 1, 1),
    (4, 6, 1, 2, 0, 1, 1),
    (4, 6, 3, 1, 0, 1, 1),
    (4, 6, 5, 1, 2, 1, 2),
    (4, 8, 3, 2, 2, 2, 4),
]


@pytest.mark.parametrize("pool", [0, 2])
@pytest.mark.parametrize("spec", CONVS)
def test_exact_rule_equals_conv_with_ones_on_random_binary_maps(spec, pool):
    c_in, c_out, k, s, p, d, g = spec
    conv = nn.Conv2d(c_in, c_out, k, s, p, d, g)
    H = 12
    plan = build_plan(_one_layer(pool, conv, c_in, H), torch.zeros(1, 1, H, H))
    (route,) = plan.layers["1"].routes
    gen = torch.Generator().manual_seed(hash(spec) % 1000 + pool)
    for density in (0.05, 0.3, 0.9):
        S = (torch.rand(3, c_in, H, H, generator=gen) < density).double()
        pooled = F.avg_pool2d(S, pool, divisor_override=1) if pool else S  # avgpool as a sum
        ones = torch.ones(c_out, c_in // g, k, k, dtype=torch.float64)
        reference = F.conv2d(pooled, ones, None, s, p, d, g).sum()  # SpikingJelly's SynOpCounter rule
        assert route.sops(S.sum(0)) == reference
        assert (S.sum(0) * route.full(S.shape[1:])).sum() == reference


def test_exact_rule_is_nnz_times_fanout_away_from_borders_and_strides():
    for k, p in ((3, 1), (5, 2)):
        conv = nn.Conv2d(4, 6, k, 1, p)
        plan = build_plan(_one_layer(0, conv, 4, 10), torch.zeros(1, 1, 10, 10))
        S = torch.zeros(4, 10, 10, dtype=torch.float64)
        S[:, p:10 - p, p:10 - p] = (torch.rand(4, 10 - 2 * p, 10 - 2 * p, generator=torch.Generator().manual_seed(k)) < 0.4).double()
        assert plan.layers["1"].routes[0].sops(S) == S.sum() * 6 * k * k  # Norse's formula
    # and a linear layer is always nnz x out
    plan = build_plan(nn.Sequential(nn.Linear(7, 9), act(), nn.Linear(9, 4), act()).eval(), torch.zeros(1, 7))
    assert torch.equal(plan.layers["1"].routes[0].full((9,)), torch.full((9,), 4.0))


def _binary_spikes(snn, x, T):
    """{neuron name: [T, B, ...] binary spikes} of a plain T-step simulation."""
    spikes = {}
    handles = []
    for name, n in snn.neurons().items():
        def hook(mod, _inp, out, name=name):
            k = out.shape[0] // x.shape[0]
            spikes.setdefault(name, []).append((out.view(k, x.shape[0], *out.shape[1:]) / mod.threshold_view(out.dim())).round())
        handles.append(n.register_forward_hook(hook))
    snn(x, T, 1)
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in spikes.items()}


def _ones(conv):
    return lambda S: F.conv2d(S.double(), torch.ones_like(conv.weight, dtype=torch.float64), None, conv.stride, conv.padding).sum()


def test_resnet20_counts_equal_a_by_hand_reference():
    """The rule written out for ResNet-20's wiring (not from the traced graph): stem act -> block conv1 +
    identity; act1 -> conv2; act2 -> next conv1 + identity or 1x1/2 conv shortcut; last act2 -> pool -> fc."""
    ann = random_ann("resnet20")
    x = images(3, 5)
    T = 5
    summary, _ = count(ann, x, [T])
    snn = convert(ann, x[:1])
    S = {k: v.sum(0) for k, v in _binary_spikes(snn, x, T).items()}  # per-neuron counts [B, ...]
    blocks = [(f"layer{i}.{j}", ann.get_submodule(f"layer{i}.{j}")) for i in (1, 2, 3) for j in range(3)]
    expected = {}
    prev = "act1"
    for name, block in blocks:
        short = block.shortcut
        into_block = _ones(block.conv1)(S[prev]) + (_ones(short[0])(S[prev]) if len(short) else S[prev].sum())
        expected[prev] = into_block
        expected[f"{name}.act1"] = _ones(block.conv2)(S[f"{name}.act1"])
        prev = f"{name}.act2"
    expected[prev] = S[prev].sum() * 10
    assert len(summary["per_layer"]) == 19
    for rec in summary["per_layer"]:
        assert rec["sops"][str(T)] == pytest.approx(float(expected[rec["name"]]) / 3, abs=0.006), rec["name"]
        assert rec["spikes"][str(T)] == pytest.approx(float(S[rec["name"]].sum()) / 3, abs=1e-4)
    assert summary["mac_first"] == ann.conv1.out_channels * 32 * 32 * 9  # the stem conv on 32x32, once


@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
def test_counts_read_at_every_T_from_one_run_equal_separate_runs(arch):
    ann = random_ann(arch)
    x = images(4, 11)
    snn = convert(ann, x[:1])
    plan = build_plan(ann, x[:1])
    one, _ = count(ann, x, [1, 2, 3, 6], snn, plan)
    for T in (1, 2, 3, 6):
        alone, _ = count(ann, x, [T], snn, plan)
        for a, b in zip(one["per_layer"], alone["per_layer"]):
            for key in ("spikes", "sops", "mse", "psi_zero_share", "firing_rate"):
                assert a[key][str(T)] == b[key][str(T)], (a["name"], key, T)
        assert one["energy_pj"][str(T)] == alone["energy_pj"][str(T)]
    assert one["total_sops"]["6"] > one["total_sops"]["1"] > 0


def test_counting_does_not_change_the_simulation():
    ann = random_ann("vgg16")
    x = images(4, 3)
    snn = convert(ann, x[:1])
    plain = snn(x, 6, 1)
    _, counted = count(ann, x, [2, 6], snn)
    assert torch.equal(plain, counted)


def test_conversion_error_is_zero_where_the_snn_equals_the_quantised_ann():
    """Tiny's act1 fires at every step with current 1 = theta: the ANN's QCFS level is L (a = theta), the SNN
    average is theta at every T, so mse = 0 and every count equals the quantised ANN count T."""
    summary, _ = count(Tiny().eval(), X_TINY, [1, 2, 4])
    rec = layer(summary, "act1")
    assert rec["mse"] == {"1": 0.0, "2": 0.0, "4": 0.0}
    assert rec["psi_zero_share"] == {"1": 100.0, "2": 100.0, "4": 100.0}
    # act2: ANN a = QCFS(0.5) = 0.5 (level 2 of 4); SNN fires at odd steps: average 1, 0.5, 0.5 at T = 1, 2, 4
    rec = layer(summary, "act2")
    assert rec["mse"] == {"1": 0.25, "2": 0.0, "4": 0.0}
    assert rec["psi_zero_share"]["2"] == 100.0 and rec["psi_zero_share"]["4"] == 100.0


def test_an_uncountable_graph_is_refused_naming_the_fix():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), act(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3), act()).eval()
    with pytest.raises(SnnconvError, match="stats=false"):
        build_plan(net, torch.zeros(1, 1, 12, 12))


def test_totals_of_two_shards_add_up_to_one_run():
    """What `distributed.sum_over_ranks` does with the ranks' `totals()`: two halves of a batch, counted apart
    and added key by key, give the one-process summary."""
    from snnconv.distributed import _add_into, _cpu

    ann = random_ann("vgg16")
    x = images(6, 13)
    snn, plan = convert(ann, x[:1]), build_plan(ann, x[:1])
    whole, _ = count(ann, x, [2, 5], snn, plan)
    total: dict = {}
    for half in (x[:3], x[3:]):
        counter = SpikeCounter(plan)
        with counter.attached(snn, ann), torch.no_grad():
            ann(half)
            counter.begin([2, 5], 3)
            snn(half, 5, 1)
        _add_into(total, _cpu(counter.totals()))
    merged = counter.summary(totals=total)
    for a, b in zip(whole["per_layer"], merged["per_layer"]):
        assert a["spikes"] == b["spikes"] and a["sops"] == b["sops"] and a["psi_zero_share"] == b["psi_zero_share"]
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-5)
    assert merged["total_sops"] == whole["total_sops"] and merged["images"] == {"2": 6, "5": 6}


def _method(name, **overrides):
    from types import SimpleNamespace

    from snnconv.methods import build_method

    cfg = dict(name=name, alpha=0.5, iterations=1, update="residual", rho=3, passes=1, eps=0.001, batches=1,
               batch_size=4)
    return build_method(SimpleNamespace(**{**cfg, **overrides}))


@pytest.mark.parametrize("passes", [1, 2])
def test_cos_presimulation_work_is_counted(passes):
    """Pre-simulation spikes = those of a plain IF neuron from v0 on the layer's first rho inputs (pass 1, an
    independent reference); re-delivery SOPs = passes x the SOPs of steps < rho into spiking layers; neuron
    updates include rho * passes steps."""
    ann = random_ann("vgg16")
    x = images(4, 21)
    rho, T_list = 3, [1, 3, 5]
    snn, plan = convert(ann, x[:1]), build_plan(ann, x[:1])
    method = _method("offset_spike", rho=rho, passes=passes)
    method.attach(snn)
    inputs = {}

    def first_inputs(mod, args, name):  # the first chunk's layer input [rho, B, ...]; returns None (input unchanged)
        if name not in inputs:
            inputs[name] = mod.unfold(args[0])[:rho].clone()

    hooks = [n.register_forward_pre_hook(functools.partial(first_inputs, name=name)) for name, n in snn.neurons().items()]
    counter = SpikeCounter(plan)
    with counter.attached(snn, ann), torch.no_grad():
        ann(x)
        counter.begin(T_list, 4)
        snn(x, method.sim_steps(5), 1, first_chunk=method.first_chunk)
    for h in hooks:
        h.remove()
    summary = counter.summary()
    assert summary["conventions"]["presim_counted"] is True
    total = 0.0
    for rec in summary["per_layer"]:
        neuron = snn.neurons()[rec["name"]]
        spiking_targets = sum(v for k, v in rec["sops_by_target"][str(rho)].items() if k != "output")
        for T in T_list:
            assert rec["neuron_updates"][str(T)] == rec["neurons"] * (T + rho * passes)
            assert rec["presim_sops"][str(T)] == pytest.approx(passes * spiking_targets, abs=0.01)
        if passes == 1:
            seq = inputs[rec["name"]]
            theta = neuron.threshold_view(seq.dim() - 1)
            v = (neuron.v0_frac * theta).expand_as(seq[0]).clone()
            n = 0.0
            for t in range(rho):
                s, _, v = neuron.step(v, seq[t], t, theta)
                n += float(s.sum())
            assert rec["presim_spikes"]["5"] == pytest.approx(n / 4, abs=1e-4), rec["name"]
        total += rec["presim_sops"]["5"]
    assert total > 0 and summary["presim_sops"]["5"] == pytest.approx(total, abs=0.5)
    assert summary["total_sops"]["5"] == pytest.approx(summary["sops_main"]["5"] + summary["presim_sops"]["5"], abs=0.5)


@pytest.mark.parametrize("name", ["baseline", "offset_spike", "ftbc", "ftbc_offset_spike"])
def test_statistics_never_change_accuracy(name):
    from torch.utils.data import DataLoader, TensorDataset

    from snnconv.evaluate import evaluate

    ann = random_ann("resnet20")
    x = images(8, 4)
    loader = DataLoader(TensorDataset(x, torch.arange(8) % 10), batch_size=4)
    snn = convert(ann, x[:1])
    method = _method(name)
    method.calibrate(snn, ann, [images(4, 9)], 4, 1)
    plain = evaluate(snn, ann, loader, [1, 2, 4], method, torch.device("cpu"), 1, progress=False)
    counter = SpikeCounter(build_plan(ann, x[:1]))
    counted = evaluate(snn, ann, loader, [1, 2, 4], method, torch.device("cpu"), 1, progress=False, counter=counter)
    assert counted == plain
    summary = counter.summary()
    assert summary["images"] == {"1": 8, "2": 8, "4": 8} and summary["total_sops"]["4"] > 0
    rec = layer(summary, "layer1.0.act1")  # fed by a conv + BN: one bias AC per neuron per step, + FTBC's beta[t]
    ftbc = name.startswith("ftbc")
    assert rec["bias_acs"]["4"] == rec["neurons"] * 4 * (2 if ftbc else 1)
