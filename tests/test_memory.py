"""Memory planning: layer-shape profile by hand, the plan is the largest chunk / micro-batch within the budget, and
a simulation run with a plan forced by a tiny budget equals one whole-batch run."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from nets import images, random_ann
from snnconv import SnnconvError
from snnconv.ann.qcfs import QCFS
from snnconv.evaluate import evaluate
from snnconv.methods.baseline import Baseline
from snnconv.methods.offset_spike import OffsetSpike
from snnconv.models import create_model
from snnconv.snn import convert
from snnconv.snn.memory import MemoryProfile, plan_simulation, predicted_peak, profile_network
from snnconv.stats import SpikeCounter, build_plan


def small_net():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), QCFS(L=4), nn.Conv2d(2, 4, 3, stride=2, padding=1), QCFS(L=4),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    )


def test_profile_of_a_small_network_by_hand():
    p = profile_network(small_net(), (1, 8, 8))
    # fp32 bytes per image: conv1 256 -> 512 (static), QCFS 512 -> 512, conv2 512 -> 256, QCFS 256 -> 256,
    # flatten 256 -> 256, linear 256 -> 40
    assert p == MemoryProfile(
        weights=4 * ((2 * 9 + 2) + 1 + (4 * 2 * 9 + 4) + 1 + (64 * 10 + 10)),
        state=512 + 256, static=512, step=(512 + 512) + 512, neuron=512, input=256, classes=10,
    )
    # 2 weights + B input + b (state + static + k step + 2 T classes 4)
    assert predicted_peak(p, batch=10, micro_batch=5, chunk=3, steps=8) == (
        2 * p.weights + 10 * 256 + 5 * (768 + 512 + 3 * 1536 + 2 * 8 * 40)
    )
    # the first chunk holds at least first_chunk steps; copies add states and neuron layers
    assert predicted_peak(p, 1, 1, 1, 8, first_chunk=4, neuron_copies=2, state_copies=1) == (
        2 * p.weights + 256 + 2 * 768 + 512 + 4 * 1536 + 2 * 512 + 2 * 8 * 40
    )


def test_profile_needs_no_weights_and_no_memory():
    with torch.device("meta"):
        vgg = create_model("vgg16", act_layer=QCFS, num_classes=1000, in_chans=3, img_size=224, stem="imagenet")
    p = profile_network(vgg, (3, 224, 224))
    assert p.neuron == 64 * 224 * 224 * 4  # conv1_1's output
    assert p.static == 2 * p.neuron  # conv1_1 and its BN run before the first activation
    assert p.weights > 500e6 and p.classes == 1000


def assert_same(a, b, rel, path="") -> None:
    """Equal nested results: floats within `rel`, everything else exactly."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], rel, f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, rel, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-12), path
    else:
        assert a == b, path


def _peak(p, batch, plan, steps, **kw):
    return predicted_peak(p, batch, plan.micro_batch, plan.chunk, steps, **kw)


@pytest.mark.parametrize("first_chunk", [0, 4])
def test_the_plan_is_the_largest_chunk_then_micro_batch_that_fits(first_chunk):
    p = profile_network(small_net(), (1, 8, 8))
    B, T = 20, 16
    unlimited = plan_simulation(p, B, T, None, max_chunk=T, first_chunk=first_chunk)
    assert (unlimited.chunk, unlimited.micro_batch) == (T, B)
    for budget in range(predicted_peak(p, B, 1, 1, T, first_chunk), predicted_peak(p, B, B, T, T) + 1, 997):
        plan = plan_simulation(p, B, T, budget, max_chunk=T, first_chunk=first_chunk)
        assert _peak(p, B, plan, T, first_chunk=first_chunk) == plan.peak <= budget
        if plan.micro_batch < B:  # the whole batch does not fit even at the smallest chunk ...
            assert predicted_peak(p, B, B, 1, T, first_chunk) > budget
            assert predicted_peak(p, B, plan.micro_batch + 1, 1, T, first_chunk) > budget  # ... the largest part
        if plan.chunk < T:
            assert predicted_peak(p, B, plan.micro_batch, plan.chunk + 1, T, first_chunk) > budget
    assert plan_simulation(p, B, T, 10**9, max_chunk=1).chunk == 1  # CPU preference kept
    assert plan_simulation(p, B, T, 10**9, max_chunk=T, chunk=3).chunk == 3  # the user's chunk kept
    with pytest.raises(SnnconvError, match="one image at time chunk .* raise snn.memory_fraction"):
        plan_simulation(p, B, T, predicted_peak(p, B, 1, 1, T, first_chunk) - 1, max_chunk=T, first_chunk=first_chunk)


@pytest.mark.parametrize("method", ["baseline", "offset_spike"])
def test_a_tiny_budget_forces_both_paths_and_changes_nothing(method):
    """Plans forced by tiny budgets (micro-batches of 2 at the smallest chunk; a mid-size chunk) give the same
    accuracies, agreements, spike counts and SOPs as one whole-batch, whole-sequence evaluation."""
    ann = random_ann("vgg16")
    x = images(6, 11)
    T = 6
    snn = convert(ann, x[:1])
    with torch.no_grad():  # labels that move with T, so accuracies are not all equal
        y = snn(x, 2, 2).sum(0).argmax(-1)
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    m = OffsetSpike({"rho": 3, "passes": 2}, diagnose=False) if method == "offset_spike" else Baseline()
    first = m.first_chunk
    p = profile_network(ann, (1, 32, 32))
    plans = [plan_simulation(p, 6, T, budget, max_chunk=T, first_chunk=first)
             for budget in (predicted_peak(p, 6, 2, 1, T, first), predicted_peak(p, 6, 6, 2, T, first), None)]
    assert [(q.chunk, q.micro_batch) for q in plans] == [(max(1, first), 2), (max(2, first), 6), (T, 6)]
    stats_plan = build_plan(ann, x[:1])
    results = []
    for plan in plans:
        counter = SpikeCounter(stats_plan)
        ev = evaluate(snn, ann, loader, [1, 2, 4, 6], m, torch.device("cpu"), plan.chunk, progress=False,
                      counter=counter, micro_batch=plan.micro_batch)
        summary = counter.summary()
        results.append((ev, summary))
    assert results[1] == results[2]  # same batch: everything equal
    # micro-batches: accuracies and counts equal; the per-batch float sums of the squared conversion error differ
    # in the 6th digit (fp32 dot products in another order)
    assert_same(results[0], results[2], rel=1e-5)
    assert len(set(results[2][0]["acc"].values())) > 1 and results[2][1]
