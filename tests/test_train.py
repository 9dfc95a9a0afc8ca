"""Training: a run killed mid-epoch and rerun resumes to the same weights as an uninterrupted run, concurrent jobs
needing one cache entry train it once, train.amp is a one-line no-op on CPU, and the cache key ignores the speed
options."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from snnconv.config import Config
from snnconv.data import build_loaders
from snnconv.models import create_model
from snnconv.runner import seed_everything
from snnconv.train import cache_key, cache_lock, load_or_train, resume_path, train_ann

ROOT = Path(__file__).resolve().parents[1]
# digits at 8x8 (the originals' size), a quarter-width ResNet-20, random crops (so the RNG state matters): 4 steps
# per epoch, about a second per epoch on one core
TINY = ["data.img_size=8", "data.limit_train=256", "data.batch_size=64", "data.augment=crop_flip", "arch.width=0.25",
        "train.epochs=3", "train.lr=0.05"]


def tiny_cfg(ckpt_dir: Path, *overrides: str):
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist([*TINY, *overrides]))
    cfg.checkpoint_dir = str(ckpt_dir)
    return cfg


def fresh(cfg):
    """What a new process builds before training: seeded RNGs, loaders, an untrained model."""
    seed_everything(int(cfg.seed))
    loaders = build_loaders(cfg.data, seed=int(cfg.seed))
    model = create_model(cfg.arch.name, num_classes=10, in_chans=1, img_size=cfg.data.img_size, width=cfg.arch.width,
                         act_layer=__import__("snnconv.ann", fromlist=["act_layer"]).act_layer(cfg.ann))
    return loaders, model


class Killed(Exception):
    pass


class DiesAfter:
    """The training loader, killed after `n` batches (counted over epochs), like a SIGKILL mid-epoch (its sampler
    is passed through: train_ann calls a DistributedSampler's set_epoch)."""

    def __init__(self, loader, n: int):
        self.loader, self.n, self.generator = loader, n, loader.generator
        self.sampler = getattr(loader, "sampler", None)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.n == 0:
                raise Killed
            self.n -= 1
            yield batch


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    cfg = tiny_cfg(tmp_path / "a")
    loaders, model = fresh(cfg)
    whole = load_or_train(cfg, model, loaders.train, torch.device("cpu"), progress=False)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    cfg_b = tiny_cfg(tmp_path / "b")
    loaders, model = fresh(cfg_b)
    with pytest.raises(Killed):  # dies in the 2nd batch of epoch 2, after the epoch-1 checkpoint
        load_or_train(cfg_b, model, DiesAfter(loaders.train, 5), torch.device("cpu"), progress=False)
    entry = next((tmp_path / "b").glob("*.pt"))
    assert entry.name.endswith(".resume.pt") and torch.load(entry, weights_only=False)["epoch"] == 1
    loaders, model = fresh(cfg_b)
    torch.manual_seed(123)  # a new process's RNG is wherever it is: the checkpoint's states must win
    resumed = load_or_train(cfg_b, model, loaders.train, torch.device("cpu"), progress=False)
    assert resumed["source"] == "trained" and resumed["resumed_from_epoch"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert (resumed["loss"], resumed["train_acc"]) == (whole["loss"], whole["train_acc"])
    assert [p.name for p in (tmp_path / "b").glob("*.pt")] == [Path(resumed["path"]).name]  # resume file replaced
    assert not any(k.startswith("_") for k in torch.load(resumed["path"], weights_only=True))  # a plain state dict


def test_two_threads_needing_one_cache_entry_train_it_once(tmp_path, monkeypatch):
    """flock locks belong to an open file, so two threads of one process exclude each other like two jobs do."""
    from snnconv import train as train_module

    cfg = tiny_cfg(tmp_path, "train.epochs=1")
    messages: queue.Queue[str] = queue.Queue()
    monkeypatch.setattr(train_module, "print", lambda *a, **k: messages.put(" ".join(map(str, a))), raising=False)
    calls = []
    real_train = train_module.train_ann
    monkeypatch.setattr(train_module, "train_ann", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    jobs = [fresh(cfg) for _ in range(2)]
    results: list[dict] = []

    def job(loaders, model):
        results.append(load_or_train(cfg, model, loaders.train, torch.device("cpu"), progress=True))

    path = Path(cfg.checkpoint_dir) / f"digits-resnet20-qcfs-{cache_key(cfg)}.pt"
    threads = [threading.Thread(target=job, args=j) for j in jobs]
    with cache_lock(path, progress=False):  # held until both jobs wait for it: they really are concurrent
        for t in threads:
            t.start()
        waiting = [messages.get(timeout=60) for _ in threads]
    for t in threads:
        t.join(timeout=120)
    assert waiting == [f"waiting for {path.name}: another job is training this ANN"] * 2
    assert sorted(r["source"] for r in results) == ["cache", "trained"] and len(calls) == 1
    states = [model.state_dict() for _, model in jobs]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())  # the waiter loaded what was trained


@pytest.mark.slow
def test_two_jobs_needing_one_cache_entry_train_it_once(tmp_path):
    cfg = tiny_cfg(tmp_path / "ckpt", "train.epochs=1")
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, torch\n"
        "from omegaconf import OmegaConf\n"
        "from test_train import fresh\n"
        "from snnconv.train import load_or_train\n"
        "cfg = OmegaConf.load(sys.argv[1])\n"
        "loaders, model = fresh(cfg)\n"
        "info = load_or_train(cfg, model, loaders.train, torch.device('cpu'), progress=True)\n"
        "print('source=' + info['source'], flush=True)\n"
    )
    OmegaConf.save(cfg, tmp_path / "cfg.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    path = Path(cfg.checkpoint_dir) / f"digits-resnet20-qcfs-{cache_key(cfg)}.pt"
    with cache_lock(path, progress=False):  # held until both jobs wait for it: they really are concurrent
        jobs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cfg.yaml")], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
        for job in jobs:
            line = job.stdout.readline()
            assert line.startswith(f"waiting for {path.name}"), line
    outputs = [job.communicate(timeout=120)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    sources = sorted(out.strip().splitlines()[-1] for out in outputs)
    assert sources == ["source=cache", "source=trained"], outputs
    assert sum("epoch 1/1" in out for out in outputs) == 1  # one training loop ran


def test_amp_on_cpu_is_a_no_op_said_in_one_line(tmp_path, capsys):
    weights = []
    for amp in (False, True):
        cfg = tiny_cfg(tmp_path, "train.epochs=1", "train.limit_batches=2", f"train.amp={amp}")
        loaders, model = fresh(cfg)
        train_ann(model, loaders.train, cfg.train, torch.device("cpu"), progress=False)
        weights.append(model.state_dict())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.amp=true is a no-op on cpu" in err[0] and "fp32" in err[0], err
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k


def test_cache_key_ignores_speed_options_but_not_amp(tmp_path):
    base = cache_key(tiny_cfg(tmp_path))
    assert cache_key(tiny_cfg(tmp_path, "train.save_every=5", "train.channels_last=true", "data.num_workers=4")) == base
    assert cache_key(tiny_cfg(tmp_path, "train.amp=true")) != base
    assert resume_path(Path("c/x-1.pt")) == Path("c/x-1.resume.pt")


def test_loaded_thresholds_unset_relu_passes_nonpositive_or_nan_lambda_refused():
    """check_thresholds (run on every loaded checkpoint and cache entry): a ReLU source's threshold is NaN until
    calibration sets it from data, so a cache entry written before calibration must load (it used to be refused,
    and every ann=relu run after the first retrained its ANN); a set threshold <= 0 and a NaN QCFS lambda are
    refused naming the layer."""
    from snnconv import SnnconvError
    from snnconv.ann.qcfs import QCFS
    from snnconv.ann.relu import ReLUAct
    from snnconv.train import check_thresholds

    relu = create_model("resnet20", act_layer=ReLUAct, num_classes=10, in_chans=1, img_size=16, width=0.25)
    assert all(torch.isnan(m.threshold).all() for m in relu.modules() if isinstance(m, ReLUAct))
    check_thresholds(relu, "cache file x.pt")  # unset: fine
    first = next(m for m in relu.modules() if isinstance(m, ReLUAct))
    first.threshold = torch.tensor(-1.0)
    with pytest.raises(SnnconvError, match=r"the threshold of layer \S+ is -1, outside its range"):
        check_thresholds(relu, "cache file x.pt")
    qcfs = create_model("resnet20", act_layer=lambda: QCFS(L=4, init_threshold=2.0), num_classes=10, in_chans=1,
                        img_size=16, width=0.25)
    check_thresholds(qcfs, "ann.checkpoint q.pt")
    with torch.no_grad():
        next(m for m in qcfs.modules() if isinstance(m, QCFS)).threshold.fill_(float("nan"))
    with pytest.raises(SnnconvError, match=r"threshold \(QCFS lambda\) of layer \S+ is nan"):
        check_thresholds(qcfs, "ann.checkpoint q.pt")


def test_a_relu_ann_is_trained_once_then_loaded_from_the_cache(tmp_path):
    """ann=relu end to end twice on one cache folder: the second run loads the cached ANN (no training) and its
    percentile thresholds equal the first run's (both from the same calibration images)."""
    from tests.conftest import compose_config

    from snnconv.config import validate
    from snnconv.runner import run

    results = []
    for i in range(2):
        cfg = compose_config(f"checkpoint_dir={tmp_path / 'ckpt'}", "ann=relu", "data.img_size=16", "train.epochs=1",
                             "data.limit_train=256", "data.limit_test=64", "data.calib_size=64", "T=[1,2]")
        validate(cfg)
        results.append(run(cfg, tmp_path / f"run{i}", progress=False))
    assert [r["ann"]["source"] for r in results] == ["trained", "cache"]
    assert results[1]["ann"]["acc"] == results[0]["ann"]["acc"]
    assert results[1]["ann"]["snn_thresholds"] == results[0]["ann"]["snn_thresholds"]
