"""Bad input and faults (issue 12), through run.py's own entry point `cli()` called in-process (Hydra composes,
the callbacks run, stderr is what a user sees), plus two real subprocesses.

- A table of bad inputs: each prints ONE line on stderr, exits with code 2, loads no data / trains nothing when the
  config alone is wrong, and leaves the files of an earlier run in the same folder and the ANN cache untouched.
- A sweep with a bad job runs the others, ends with "k of n jobs failed" and a non-zero exit; a rerun skips
  the finished jobs. run.log receives what was printed.
- Cache faults: a corrupt cache file is retrained with a warning (not blamed on ann.checkpoint), an unwritable
  cache after training is a warning and the results are written, stale .tmp files are removed.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

import snnconv.runner
import snnconv.train
from snnconv import jobs

ROOT = Path(__file__).resolve().parents[1]
TINY = ("data.img_size=16", "train.epochs=0", "data.limit_test=20", "data.test_batch_size=20", "T=[1,2]")


def _load_run_py():
    spec = importlib.util.spec_from_file_location("snnconv_run_py", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main.__wrapped__.__module__ = "__main__"  # Hydra finds conf/ next to the file of a __main__ task
    return module


RUN_PY = _load_run_py()


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`python run.py *args` in this process: (exit code, stdout, stderr)."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["run.py", *args])
    try:
        code = RUN_PY.cli()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(*folders: Path) -> dict[str, str]:
    """sha1 of every results file / checkpoint below `folders` (run.log, status.json and Hydra's .hydra/ are
    rewritten by every run in a folder and are not results)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and ".hydra" not in p.parts and p.name not in ("run.log", "status.json"):
                out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A finished tiny run (its folder and the ANN cache) that every bad input below must leave as it is, plus
    checkpoint files of every bad kind."""
    tmp = tmp_path_factory.mktemp("earlier")
    mp, cap = pytest.MonkeyPatch(), _Capture()
    with cap:
        code, out, err = cli(mp, cap, *TINY, f"hydra.run.dir={tmp / 'run'}", f"checkpoint_dir={tmp / 'ckpt'}")
    mp.undo()
    assert code == 0, err
    (ckpt,) = (tmp / "ckpt").glob("*.pt")
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "random.pt").write_bytes(b"garbage:" + random.Random(0).randbytes(2000))  # seeded: the error depends on the bytes
    (bad / "empty.pt").write_bytes(b"")
    (bad / "text.pt").write_text("not a checkpoint\n")
    good = ckpt.read_bytes()
    (bad / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save(torch.nn.Linear(2, 2), bad / "pickled_model.pt")
    torch.save({"epoch": 3}, bad / "no_tensors.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), bad / "other_net.pt")
    state = torch.load(ckpt, weights_only=True)
    torch.save({k: -v.abs() if k.endswith("threshold") else v for k, v in state.items()}, bad / "negative_lambda.pt")
    (tmp / "a_file").write_text("")
    return tmp


class _Capture:
    """capsys for a module-scoped fixture: sys.stdout / sys.stderr into strings."""

    def __enter__(self):
        import io

        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.out, self.err = io.StringIO(), io.StringIO()
        return self

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved

    def readouterr(self):
        out, err = self.out.getvalue(), self.err.getvalue()
        self.out.seek(0), self.out.truncate(), self.err.seek(0), self.err.truncate()
        return out, err


# (overrides, a fragment of the one-line message, stage). Stage "config": refused before any data is loaded;
# "load": refused after the data set is opened (the checkpoint must be matched against the network), before any
# training. {bad} is the folder of bad checkpoint files, {tmp} the earlier run's root.
def _installed(module: str) -> bool:
    """find_spec of a submodule raises when its parent package (here the hydra_plugins namespace) is absent."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


COMPOSITION = [  # type and key errors: Hydra's own report folded into one line
    (["T=4"], "T is a list: write 'T=[4]'", "config"),
    (["data.bogus=1"], "data.bogus is not a setting; the settings of data: name, root,", "config"),
    (["data.rot=x"], "data.rot is not a setting; did you mean data.root?", "config"),
    (["method=ftbc", "method.alpah=0.3"], "did you mean method.alpha? the settings of method: name, alpha,", "config"),
    (["ann.L=four"], "ann.L=four is not an integer: write e.g. ann.L=4", "config"),
    (["T=[a]"], "T=[a]: every element must be an integer", "config"),
    (["finetune.cache=maybe"], "finetune.cache=maybe is not true or false: write finetune.cache=true or", "config"),
    (["method=nonexistent"], "method", "config"),
    (["seed=1.5"], "seed=1.5 is not an integer", "config"),
    (["arch=alexnet"], "arch", "config"),
    (["method.alpha=x", "method=ftbc"], "method.alpha=x is not a number: write e.g. method.alpha=0.5", "config"),
]
CASES = COMPOSITION + [
    # keys added with '+', as Hydra's own message advises: accepted at composition, refused by validate
    (["+data.bogus=1"], "data.bogus is not a setting", "config"),
    (["+finetune.delat=1"], "finetune.delat is not a setting; did you mean finetune.delta?", "config"),
    # values
    (["T=[0]"], "positive ints", "config"),
    (["T=[]"], "positive ints", "config"),
    (["ann.L=0"], "ann.L", "config"),
    (["ann=relu", "ann.percentile=0"], "ann.percentile", "config"),
    (["ann=relu", "ann.percentile=101"], "ann.percentile", "config"),
    (["method=offset_spike", "method.rho=0"], "method.rho", "config"),
    (["method=offset_spike", "method.passes=0"], "method.passes", "config"),
    (["method=offset_spike", "method.eps=2"], "method.eps", "config"),
    (["method=ftbc", "method.alpha=-1"], "method.alpha", "config"),
    (["method=ftbc", "method.iterations=0"], "method.iterations", "config"),
    (["train.epochs=-1"], "train.epochs", "config"),
    (["snn.time_chunk=-1"], "snn.time_chunk", "config"),
    (["data.batch_size=0"], "data.batch_size=0 is outside its range: must be >= 1", "config"),
    (["data.test_batch_size=0"], "data.test_batch_size=0 is outside its range", "config"),
    (["arch.width=0"], "arch.width", "config"),
    (["ann.name=sigmoid"], "ann.name", "config"),
    (["logger.mode=sometimes"], "logger.mode", "config"),
    (["device=tpu"], "device", "config"),
    (["device=cuda"], "CUDA", "config"),
    (["device=cuda:3"], "CUDA", "config"),
    (["device=mps"], "MPS (Apple-silicon GPUs under macOS) is not available here", "config"),
    (["method=ftbc", "method.batch_size=0"], "method.batch_size=0 must be >= 1", "config"),
    (["method=ftbc", "data.calib_size=0"], "holds 0; raise data.calib_size", "config"),
    (["method=ftbc", "data.limit_train=10"], "holds 10 (data.limit_train=10 caps it)", "config"),
    (["ann=relu", "data.calib_size=0"], "ann=relu sets its thresholds from calibration images", "config"),
    (["data.calib_size=-1"], "data.calib_size=-1 is outside its range: must be >= 0", "config"),
    (["data.num_workers=-2"], "must be >= 0 loader processes, or -1 for automatic", "config"),
    (["arch=vgg16", "data.img_size=16"], "data.img_size=16 is outside its range for arch=vgg16: must be >= 32", "config"),
    (["arch=vgg16", "data.img_size=28"], "set data.img_size=32", "config"),
    (["data.img_size=0"], "data.img_size=0 is outside its range: must be >= 1", "config"),
    (["ann.init_threshold=-1"], "ann.init_threshold=-1.0 is outside its range: must be > 0", "config"),
    (["ann.init_threshold=0"], "ann.init_threshold=0.0 is outside its range: must be > 0", "config"),
    (["ann=rts", "ann.threshold=0"], "ann.threshold=0.0 is outside its range: must be > 0", "config"),
    (["method=ftbc", "method.alpha=50"], "method.alpha=50.0 is outside its range: must be in (0, 1]", "config"),
    (["data.limit_train=-1"], "data.limit_train=-1 is outside its range", "config"),
    (["data.limit_test=-1"], "data.limit_test=-1 is outside its range", "config"),
    (["data.cutout=-1"], "data.cutout=-1 is outside its range", "config"),
    (["data.std=[0]"], "data.std=[0.0] is outside its range: must be > 0 in every channel", "config"),
    (["snn.eval_batches=-1"], "snn.eval_batches=-1 is outside its range", "config"),
    (["train.lr=0"], "train.lr=0.0 is outside its range: must be > 0", "config"),
    (["train.momentum=1"], "train.momentum=1.0 is outside its range: must be in [0, 1)", "config"),
    (["train.label_smoothing=1"], "train.label_smoothing=1.0 is outside its range", "config"),
    (["train.limit_batches=-1"], "train.limit_batches=-1 is outside its range", "config"),
    (["train.save_every=-1"], "train.save_every=-1 is outside its range", "config"),
    (["arch.dropout=1.5"], "arch.dropout=1.5 is outside its range: must be in [0, 1)", "config"),
    # folders and launcher
    (["hydra.run.dir={tmp}/a_file/run"], "hydra.run.dir", "config"),
    (["checkpoint_dir={tmp}/a_file/ckpt"], "checkpoint_dir", "config"),
    # with the plugin (pip install -e '.[slurm]'): no srun on this machine; without it (CI): install the plugin
    (["-m", "hydra/launcher=slurm", "hydra.sweep.dir={tmp}/sweep"],
     "srun" if _installed("hydra_plugins.hydra_submitit_launcher") else "pip install -e '.[slurm]'",
     "config"),
    (["-m", "hydra.sweep.dir={tmp}/a_file/sweep", "seed=1,2"], "hydra.sweep.dir", "config"),
    # checkpoints
    (["ann.checkpoint={tmp}/missing.pt"], "does not exist", "load"),
    (["ann.checkpoint={bad}/random.pt"], "is not a PyTorch checkpoint (UnpicklingError", "load"),
    (["ann.checkpoint={bad}/empty.pt"], "ends early", "load"),
    (["ann.checkpoint={bad}/text.pt"], "is not a PyTorch checkpoint", "load"),
    (["ann.checkpoint={bad}/truncated.pt"], "not a readable PyTorch checkpoint (RuntimeError: PytorchStreamReader", "load"),
    (["ann.checkpoint={bad}/pickled_model.pt"], "(torch.nn.modules.linear.Linear) that the safe loader refuses; if you "
                                                "trust the file set ann.trust_checkpoint=true", "load"),
    (["ann.checkpoint={bad}/no_tensors.pt"], "holds no state dict", "load"),
    (["ann.checkpoint={bad}/other_net.pt"], "does not fit", "load"),
    (["ann.checkpoint={bad}/negative_lambda.pt"], "the threshold (QCFS lambda) of layer", "load"),
]


GROUPS = ("data", "arch", "ann", "method", "train", "logger", "experiment", "debug")
_BASES: dict[tuple, Any] = {}


def via_cli(overrides: list[str]) -> bool:
    """Composition errors, Hydra settings and flags need run.py's whole path (Hydra's composition costs ~0.5 s a
    call); value errors are composed once per group choice and run through the task body `jobs.execute`, which
    is what run.py's task calls (two of them also through run.py, to show the path is the same)."""
    return (overrides in [c[0] for c in COMPOSITION] or any(o.startswith(("-", "+", "hydra.")) for o in overrides)
            or overrides[0] in ("T=[0]", "device=mps"))


def composed(groups: tuple[str, ...], earlier: Path):
    if groups not in _BASES:
        from hydra import compose, initialize_config_dir

        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            _BASES[groups] = compose(config_name="config", overrides=[*groups, *TINY,
                                                                       f"checkpoint_dir={earlier / 'ckpt'}"])
    return copy.deepcopy(_BASES[groups])


def run_task(earlier: Path, overrides: list[str], capsys) -> tuple[int, str, str]:
    """A command line's value overrides applied to its composed group choices, then the task body."""
    groups = tuple(o for o in overrides if o.split("=")[0] in GROUPS)
    cfg = composed(groups, earlier)
    with open_dict(cfg):
        for o in overrides:
            if o not in groups:
                key, value = o.split("=", 1)
                OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    result = jobs.execute(cfg, earlier / "run", log_path=earlier / "run" / "run.log")
    out, err = capsys.readouterr()
    return (result.exit_code if isinstance(result, jobs.JobFailed) else 0), out, err


@pytest.mark.parametrize("overrides,fragment,stage", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_earlier_changes(earlier, monkeypatch, capsys, overrides,
                                                                    fragment, stage):
    before = snapshot(earlier / "run", earlier / "ckpt")
    calls = []
    real_loaders, real_train = snnconv.runner.build_loaders, snnconv.train.train_ann
    monkeypatch.setattr(snnconv.runner, "build_loaders", lambda *a, **k: calls.append("data") or real_loaders(*a, **k))
    monkeypatch.setattr(snnconv.train, "train_ann", lambda *a, **k: calls.append("train") or real_train(*a, **k))
    args = [o.format(tmp=earlier, bad=earlier / "bad") for o in overrides]
    if via_cli(overrides):
        if not any(a.startswith("hydra.") for a in args):
            args.append(f"hydra.run.dir={earlier / 'run'}")  # the earlier run's folder: its results must survive
        flags = [a for a in args if a.startswith("-")]
        args = [a for a in args if not a.startswith("-")]
        code, out, err = cli(monkeypatch, capsys, *flags, *TINY, f"checkpoint_dir={earlier / 'ckpt'}", *args)
    else:
        code, out, err = run_task(earlier, args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err, out[-500:])
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err + out and "WeightsUnpickler" not in err and "add_safe_globals" not in err
    assert calls == ([] if stage == "config" else ["data"]), calls
    assert snapshot(earlier / "run", earlier / "ckpt") == before


def test_a_sweep_with_a_bad_job_runs_the_others_and_a_rerun_skips_them(earlier, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    args = ("-m", *TINY, f"checkpoint_dir={earlier / 'ckpt'}", f"hydra.sweep.dir={sweep}", "T=[1],[0],[2]")
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 2, err
    assert "error: 1 of 3 jobs failed: #1 (T=[0]): T must be a non-empty list of positive ints" in err, err
    finished = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert finished == ["0_T=[1],data.img_size=16,data.limit_test=20,data.test_batch_size=20,train.epochs=0",
                        "2_T=[2],data.img_size=16,data.limit_test=20,data.test_batch_size=20,train.epochs=0"]
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    failed = json.loads(next(sweep.glob("1_*/status.json")).read_text())
    assert failed["status"] == "failed" and failed["exit_code"] == 2
    log = next(sweep.glob("0_*/run.log")).read_text()
    assert "[stdout] ANN acc %" in log and "results in" in log  # what was printed reached run.log

    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and "1 of 3 jobs failed (2 skipped: results already complete)" in err, err
    assert out.count("skipped: complete results for this config are already in") == 2
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")} == stamps

    code, out, err = cli(monkeypatch, capsys, *args[:-1], "T=[1],[2]")  # the bad job dropped: all done
    assert code == 0 and "2 of 2 jobs finished (2 skipped: results already complete)" in out, (out, err)


def test_sweep_folder_names_do_not_nest_paths():
    assert jobs.safe_dirname("ann.checkpoint=/a/b/c.pt,seed=1") == "ann.checkpoint=_a_b_c.pt,seed=1"
    long = jobs.safe_dirname("x=" + "y" * 400)
    assert len(long) == 150 and "/" not in long and long != jobs.safe_dirname("x=" + "y" * 401)


def test_a_corrupt_cache_file_is_retrained_with_a_warning(earlier, tmp_path, monkeypatch, capsys):
    (good,) = (earlier / "ckpt").glob("*.pt")
    cache = tmp_path / "ckpt"
    cache.mkdir()
    (cache / good.name).write_bytes(random.Random(0).randbytes(500))  # seeded: torch.load's error depends on the bytes
    stale = cache / f".{good.name}.abc123.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))  # from a write killed long ago
    fresh = cache / ".other.pt.def456.tmp"
    fresh.write_bytes(b"in progress")  # a parallel job's write in progress: kept
    code, out, err = cli(monkeypatch, capsys, *TINY, f"checkpoint_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    # random bytes fail in torch.load's unpickler or its zip reader, depending on the bytes: both are one warning
    assert err.startswith((f"warning: cache file='{cache / good.name}' is not a PyTorch checkpoint (",
                           f"warning: cache file='{cache / good.name}' is not a readable PyTorch checkpoint (")), err
    assert "ann.checkpoint" not in err and "training the ANN again and replacing the cache file" in err
    assert torch.load(cache / good.name, weights_only=True).keys() == torch.load(good, weights_only=True).keys()
    assert not stale.exists() and fresh.exists()
    assert (tmp_path / "run" / "results.json").is_file()


def test_ctrl_c_prints_one_line_saying_how_to_go_on_and_marks_the_job(tmp_path, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) in the middle of a run: exit code 130, no traceback, one line naming the rerun and
    the resume checkpoints, and status.json says interrupted (Hydra's job-end callback does not run then)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(snnconv.runner, "run", interrupted)
    code, out, err = cli(monkeypatch, capsys, *TINY, f"checkpoint_dir={tmp_path / 'ckpt'}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 130
    assert err.strip().splitlines() == [f"interrupted: {jobs.INTERRUPTED_FIX}"]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["exit_code"] == 130


def test_a_cache_that_cannot_be_written_after_training_keeps_the_results(tmp_path, monkeypatch, capsys):
    def full_disk(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snnconv.train, "atomic_save", full_disk)
    code, out, err = cli(monkeypatch, capsys, *TINY, f"checkpoint_dir={tmp_path / 'ckpt'}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    assert "warning: the trained ANN could not be cached" in err and "No space left on device" in err
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["ann"]["source"] == "trained" and saved["ann"]["path"] is None


def test_result_files_get_the_umask_permissions(earlier):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.json", "results.csv", "accuracy_vs_T.png"):
        assert (earlier / "run" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_reports_state_how_many_test_images_were_measured(earlier):
    saved = json.loads((earlier / "run" / "results.json").read_text())
    assert saved["images"] == 20 and saved["test_images_available"] == 20
    from snnconv.report import format_table

    assert "(method: baseline, 20 test images)" in format_table(saved)
    assert "20 of 360 test images" in format_table({**saved, "test_images_available": 360})
    header, first = (earlier / "run" / "results.csv").read_text().splitlines()[:2]
    assert header.endswith(",test_images,test_images_available") and first.endswith(",20,20")


def test_one_line_errors_from_a_real_process(earlier, tmp_path):
    """One check through a real `python run.py` (the others run in-process above; test_runner.py runs Hydra's
    composition errors this way): an unwritable run folder, found by a Hydra callback before the job starts."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={earlier / 'a_file' / 'x'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is a file, not a folder; set hydra.run.dir to a writable folder" in proc.stderr


class _FakeWandb:
    """Stands in for the wandb module: records what a run receives and in which phase."""

    class Settings:
        def __init__(self, **kwargs):
            pass

    class Table:
        def __init__(self, columns, data):
            pass

    class plot:  # noqa: N801 (wandb's name)
        @staticmethod
        def line(*args, **kwargs):
            return "line"

        bar = scatter = line

    class Image:
        def __init__(self, path):
            pass

    def __init__(self):
        self.records, self.finished, self.phase = [], [], "init"
        fake = self

        class Run:
            dir = "/nonexistent/files"
            summary: dict = {}

            def define_metric(self, *args, **kwargs):
                pass

            def log(self, record):
                fake.records.append((fake.phase, dict(record)))

            def finish(self, exit_code=0):
                fake.finished.append(exit_code)

        self.Run = Run

    def init(self, **kwargs):
        return self.Run()


def test_wandb_gets_training_curves_while_training_and_a_failed_run_is_marked(tmp_path, monkeypatch, capsys):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    real_evaluate = snnconv.runner.evaluate

    def evaluate(*args, **kwargs):
        fake.phase = "evaluate"
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(snnconv.runner, "evaluate", evaluate)
    common = (*TINY, "train.epochs=1", "train.limit_batches=2", "logger=wandb", "logger.mode=disabled",
              f"checkpoint_dir={tmp_path / 'ckpt'}")
    code, out, err = cli(monkeypatch, capsys, *common, f"hydra.run.dir={tmp_path / 'a'}")
    assert code == 0, err
    during_training = [r for phase, r in fake.records if phase == "init" and "train/loss" in r]
    assert during_training and during_training[0]["train/step"] == 1  # logged before evaluation started
    assert any("train/epoch_loss" in r for _, r in fake.records) and fake.finished == [0]

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in evaluation")

    monkeypatch.setattr(snnconv.runner, "evaluate", broken)
    code, out, err = cli(monkeypatch, capsys, *common, f"hydra.run.dir={tmp_path / 'b'}")
    assert code == 1 and fake.finished == [0, 1]  # the crashed run is marked failed in W&B


def test_the_baseline_does_not_refuse_calibration_settings_it_never_uses(earlier, tmp_path, monkeypatch, capsys):
    """data.calib_size=0 and data.limit_train=10 leave no calibration images: FTBC and ann=relu refuse that
    (above), the baseline on a QCFS network runs."""
    code, out, err = cli(monkeypatch, capsys, *TINY, "data.calib_size=0", "data.limit_train=10",
                         f"checkpoint_dir={tmp_path / 'ckpt'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0 and "error" not in err and "warning" not in err, err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["method"] == "baseline"


def test_a_large_ftbc_step_size_is_warned_about(capsys):
    from snnconv.methods.ftbc import warn_step_size

    warn_step_size(0.5)
    assert capsys.readouterr().err == ""
    warn_step_size(0.7)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: method.alpha=0.7 is above 0.5")


def test_help_offers_only_groups_a_user_can_choose(monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "--help")
    assert code == 0 and "method: baseline, ftbc, ftbc_offset_spike, offset_spike\n" in out, out
    assert "ann: qcfs, relu, rts\n" in out
    assert not any(word in out for word in ("paper_results", "_schema", "method_data", "method_debug", "preset:"))


def test_run_log_keeps_lines_and_each_bars_first_and_last_frame(tmp_path):
    """What a terminal shows as a redrawn bar reaches run.log as its first frame (the phase started), frames
    every `frame_interval_s`, and its last frame (how far and how long), then the printed lines in order."""
    log = tmp_path / "run.log"
    sink = jobs._LogSink(log, frame_interval_s=1e9)
    for text in ("\rtrain:   0%| 0/3", "\rtrain:  33%| 1/3", "\rtrain: 100%| 3/3 [00:05]", "\r" + " " * 20 + "\r",
                 "epoch 1: loss 2.3\n", "\revaluate: 0%", "\revaluate: 100%| 1/1\n", "partial ", "line\n"):
        sink.feed("stderr" if text.startswith("\r") else "stdout", text)
    sink.close()
    lines = [line.split("] ", 1)[1] for line in log.read_text().splitlines()]
    assert lines == ["train:   0%| 0/3", "train: 100%| 3/3 [00:05]", "epoch 1: loss 2.3", "evaluate: 100%| 1/1",
                     "partial line"]
