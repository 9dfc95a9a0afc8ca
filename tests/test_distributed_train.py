"""DDP training on 2 gloo ranks (CPU) against one process with the same global batch; rank 0's BN buffers on
every rank; a resume checkpoint written by 2 ranks and resumed by one process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from dist_utils import run_ranks
from snnconv import distributed
from snnconv.ann import QCFS
from snnconv.train import train_ann
from test_train import DiesAfter, Killed

RECIPE = dict(
    epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, label_smoothing=0.0, threshold_weight_decay=True,
    limit_batches=0, sync_bn=False, save_every=0, amp=False, channels_last=False,
)
# One process vs 2 ranks: the gradients are the same sums taken in a different order (each rank averages its
# 8 images, DDP averages the 2 ranks), so weights agree to float32 rounding after 6 SGD steps.
ATOL = 1e-5


def tiny(bn: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        *([nn.BatchNorm2d(6)] if bn else []),
        QCFS(L=4, init_threshold=1.0),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 10),
    )


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 10, (48,), generator=g))
    return DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(4))  # 3 steps


def _train(bn: bool, checkpoint: str | None = None, dies_after: int = -1) -> dict:
    model = tiny(bn)
    loader = distributed.distributed_train_loader(_loader(), seed=5)
    if dies_after >= 0:
        loader = DiesAfter(loader, dies_after)
    recipe = SimpleNamespace(**{**RECIPE, "save_every": 1})
    try:
        stats = train_ann(model, loader, recipe, torch.device("cpu"), progress=False, checkpoint=checkpoint)
    except Killed:
        return {"killed": True}
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "stats": stats,
            "world": distributed.world_size()}


def test_ddp_steps_equal_one_process_with_the_same_global_batch(tmp_path):
    torch.set_num_threads(1)
    one = _train(bn=False)
    ranks = run_ranks(_train, 2, tmp_path, False)
    assert [r["world"] for r in ranks] == [2, 2]
    start = tiny(False).state_dict()
    for key, value in one["state"].items():
        assert not torch.allclose(value, start[key])  # it trained
        for r in ranks:
            assert torch.allclose(r["state"][key], value, atol=ATOL, rtol=0), (key, (r["state"][key] - value).abs().max())
    assert ranks[0]["stats"] == ranks[1]["stats"]  # loss / accuracy summed over ranks
    assert ranks[0]["stats"]["train_acc"] == pytest.approx(one["stats"]["train_acc"])
    assert ranks[0]["stats"]["loss"] == pytest.approx(one["stats"]["loss"], abs=1e-4)


def test_bn_buffers_are_rank0s_on_every_rank(tmp_path):
    """Without sync_bn each rank normalises its own half batch (not equal to one process); the ranks still end
    with identical weights and BN buffers (DDP averages the gradients, rank 0's buffers are broadcast)."""
    a, b = run_ranks(_train, 2, tmp_path, True)
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key


def test_a_run_of_two_ranks_resumes_in_one_process(tmp_path):
    """Killed in epoch 2 after rank 0 wrote the epoch-1 checkpoint; one process resumes it and ends where an
    uninterrupted one-process run ends (the batches of an epoch depend on seed and epoch, not on the ranks)."""
    torch.set_num_threads(1)
    whole = _train(False)
    ckpt = str(tmp_path / "resume.pt")
    killed = run_ranks(_train, 2, tmp_path / "ret", False, ckpt, 4)  # 3 batches per epoch: dies in epoch 2
    assert killed == [{"killed": True}] * 2 and torch.load(ckpt, weights_only=False)["epoch"] == 1
    resumed = _train(False, ckpt)
    assert resumed["stats"]["resumed_from_epoch"] == 1
    for key, value in whole["state"].items():
        assert torch.allclose(resumed["state"][key], value, atol=ATOL, rtol=0), key
