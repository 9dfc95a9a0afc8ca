"""2 gloo ranks (CPU) against one process on the same data: evaluation counts (an uneven last shard), COS psi
diagnostics, spike statistics (SpikeCounter), FTBC biases (each calibration batch split across the ranks, an odd
batch included), FTBC+COS, and ReLU percentile thresholds. Every comparison is EXACT (torch.equal / ==): counts
are integers summed over ranks, shards are whole batches of the one-process loader, FTBC's channel means add
integer spike counts and float64 ANN sums over ranks (see snnconv.methods.ftbc.channel_mean). One exception:
the spike statistics' mean squared conversion error is a float64 sum taken in another order (rel. 1e-9)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dist_utils import run_ranks
from nets import images, random_ann
from snnconv import distributed
from snnconv.ann.relu import ReLUAct, calibrate_thresholds
from snnconv.evaluate import evaluate
from snnconv.methods.baseline import Baseline
from snnconv.methods.ftbc import FTBC
from snnconv.methods.ftbc_offset_spike import FTBCOffsetSpike
from snnconv.methods.offset_spike import OffsetSpike
from snnconv.snn import convert
from snnconv.stats import SpikeCounter, build_plan
from snnconv.utils import modules_of_type

CPU = torch.device("cpu")
T_LIST = [1, 2, 4]


def cfg(**kw):
    base = dict(alpha=0.5, iterations=2, update="residual", rho=2, passes=2, eps=0.001)
    return SimpleNamespace(**{**base, **kw})


def _test_loader() -> DataLoader:
    x = images(37, 5)  # 5 batches of 8: 3 on rank 0, 2 on rank 1 (the last one holds 5 images)
    y = torch.randint(0, 10, (37,), generator=torch.Generator().manual_seed(6))
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _no_seconds(diag: dict) -> dict:
    return {k: v for k, v in diag.items() if k != "seconds"}


def _pieces(slow: bool) -> dict:
    """Everything compared, computed on this rank's share (the whole data in one process). slow=False: baseline
    and COS evaluation, FTBC (residual), ReLU thresholds; slow=True: FTBC oracle, FTBC+COS on a ResNet-20 (a
    residual graph), evaluation of the calibrated networks."""
    out: dict = {}
    test = distributed.shard_batches(_test_loader())
    ex = images(1, 100)
    if not slow:
        ann = random_ann("vgg16")
        plan = build_plan(ann, ex)
        counter = SpikeCounter(plan)
        out["baseline"] = evaluate(convert(ann, ex), ann, test, T_LIST, Baseline(), CPU, 1, False, counter=counter)
        out["baseline_stats"] = counter.summary()
        cos, counter = OffsetSpike(cfg()), SpikeCounter(plan)
        out["cos"] = evaluate(convert(ann, ex), ann, test, T_LIST, cos, CPU, 2, False, counter=counter)
        out["cos_diag"] = cos.diagnostics()
        out["cos_stats"] = counter.summary()
        relu = copy.deepcopy(random_ann("vgg16", "relu"))
        calib = DataLoader(TensorDataset(images(41, 9)), batch_size=6)  # 7 batches: 4 + 3, the last of 5 images
        few = DataLoader(TensorDataset(images(5, 9)), batch_size=6)  # 1 batch: rank 1 has no image
        for p in (99.0, 100.0):
            for granularity in ("layer", "channel"):
                for name, loader in (("", calib), ("_one_batch", few)):
                    shard = [b[0] for b in distributed.shard_batches(loader)]
                    calibrate_thresholds(relu, shard, p, CPU, granularity)
                    thetas = {n: m.threshold.clone() for n, m in modules_of_type(relu, ReLUAct).items()}
                    out[f"thresholds_{p}_{granularity}{name}"] = thetas

    batches = [images(16, 40), images(15, 41)] + ([images(16, 42)] if slow else [])  # 8 + 8, 8 + 7 per rank
    mine = [distributed.local_rows(x) for x in batches]
    cases = [("ftbc_residual", "vgg16", FTBC(cfg(iterations=1)))]
    if slow:
        cases = [
            ("ftbc_oracle", "vgg16", FTBC(cfg(update="oracle"))),
            ("ftbc_cos", "resnet20", FTBCOffsetSpike(cfg(iterations=1))),
        ]
    for name, arch, method in cases:
        net = random_ann(arch)
        snn = convert(net, ex)
        method.calibrate(snn, net, mine, max(T_LIST), 1)
        out[name] = {n: neuron.bias.clone() for n, neuron in snn.neurons().items()}
        diag = method.diagnostics()
        out[name + "_diag"] = _no_seconds(diag.get("ftbc", diag))
        if slow:
            out[name + "_eval"] = evaluate(snn, net, test, T_LIST, method, CPU, 2, progress=False)
            out[name + "_eval_diag"] = method.diagnostics().get("offset_spike")
    return out


def _assert_same(a, b, path="") -> None:
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), (path, (a - b).abs().max())
    elif isinstance(a, float) and ".mse." in path:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), (path, a, b)
    else:
        assert a == b, (path, a, b)


def _check(tmp_path, slow: bool) -> dict:
    torch.set_num_threads(1)  # the ranks run one thread each: same kernels, same rounding
    one = _pieces(slow)
    ranks = run_ranks(_pieces, 2, tmp_path, slow)
    for r, result in enumerate(ranks):
        for key in one:
            _assert_same(one[key], result[key], f"rank {r}: {key}")
    return one


def test_two_ranks_equal_one_process(tmp_path):
    one = _check(tmp_path, slow=False)
    assert one["baseline"]["images"] == 37 and one["cos_diag"]["total"]["neurons"] > 0
    assert one["baseline_stats"]["total_sops"]["4"] > 0
    assert one["cos_diag"]["psi_zero_share_before"] < one["cos_diag"]["psi_zero_share_after"]
    assert any(b.abs().sum() > 0 for b in one["ftbc_residual"].values())


@pytest.mark.slow
def test_two_ranks_equal_one_process_oracle_and_ftbc_cos(tmp_path):
    one = _check(tmp_path, slow=True)
    assert one["ftbc_cos_eval_diag"]["total"]["neurons"] > 0
