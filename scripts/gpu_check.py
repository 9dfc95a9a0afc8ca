"""`make gpu-check`: the device check of one CUDA GPU, in at most ~8 minutes, printing one summary.

Sections (each timed; a failing section is reported and the others still run):
  1. tests   the `gpu` tests (tests/test_gpu.py: CUDA against CPU), through pytest when it is installed, else a
             minimal stand-in for the few pytest features they use (a bare machine has no pytest)
  2. pipe    one whole pipeline per method on the embedded digits with device=cuda (one ANN, trained once)
  3. bench   the simulation benchmark per time chunk (scripts/bench_simulation.py)
  4. memory  the memory planner's predicted peak against the measured one (torch.cuda.max_memory_allocated) for
             an ImageNet-shaped VGG16 batch at T=128 with random weights, with the chunk / micro-batch it chose
  5. amp     training throughput (images/s) with bf16 autocast against fp32, ResNet-20 and VGG16 on CIFAR-shaped
             random data, through snnconv.train.train_ann

Runs from a checkout without installation (the Makefile sets PYTHONPATH=src) on a machine with torch, torchvision,
timm, scikit-learn, matplotlib, tqdm, hydra-core and omegaconf. `--dry-run` runs every section at toy scale on
whatever device is there (CPU in CI), to show that the script itself works; its numbers mean nothing.

    PYTHONPATH=src python scripts/gpu_check.py [--dry-run] [--out outputs/gpu-check]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import inspect
import itertools
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from snnconv.device import configure_numerics, numerics_record  # noqa: E402

SUMMARY: list[tuple[str, str, float, str]] = []  # (section, status, seconds, one line)


def section(name):
    def wrap(fn):
        @functools.wraps(fn)
        def run(*a, **k):
            start = time.perf_counter()
            print(f"\n=== {name} ===", flush=True)
            try:
                line = fn(*a, **k)
                status = "ok"
            except Exception as exc:  # report and go on: one summary for the whole check
                traceback.print_exc()
                line, status = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}", "FAIL"
            SUMMARY.append((name, status, time.perf_counter() - start, line))

        return run

    return wrap


# ------------------------------------------------------------------------------------------------- 1. gpu tests
class _Skip(Exception):
    pass


def _pytest_stand_in() -> types.ModuleType:
    """The pytest features tests/test_gpu.py and the test modules it imports use at import time and in the gpu
    tests: marks (parametrize recorded, others ignored), fixtures (recorded), raises, skip, importorskip."""
    mod = types.ModuleType("pytest")

    class Mark:
        def __getattr__(self, name):
            def mark(*args, **kwargs):
                if len(args) == 1 and callable(args[0]) and not kwargs:
                    return args[0]

                def deco(fn):
                    if name == "parametrize":
                        fn._params = [(args[0], list(args[1])), *getattr(fn, "_params", [])]
                    if name == "skipif" and args[0]:
                        fn._skip = kwargs.get("reason", "skipif")
                    return fn

                if name == "skipif":  # also usable in a module's pytestmark list
                    deco._skip = kwargs.get("reason", "skipif") if args[0] else None
                return deco

            return mark

    def fixture(*args, **kwargs):
        def deco(fn):
            fn._fixture = kwargs
            return fn

        return deco(args[0]) if args and callable(args[0]) else deco

    @contextlib.contextmanager
    def raises(exc, match=None):
        try:
            yield
        except exc:
            return
        raise AssertionError(f"did not raise {exc}")

    def skip(reason=""):
        raise _Skip(reason)

    mod.mark, mod.fixture, mod.raises, mod.skip, mod.importorskip = Mark(), fixture, raises, skip, importlib.import_module
    return mod


def _run_without_pytest(module_name: str) -> tuple[int, int, int]:
    sys.modules.setdefault("pytest", _pytest_stand_in())
    module = importlib.import_module(module_name)
    autouse = [f for f in vars(module).values() if callable(f) and getattr(f, "_fixture", {}).get("autouse")]
    module_skip = next((m._skip for m in getattr(module, "pytestmark", []) if getattr(m, "_skip", None)), None)
    passed = failed = skipped = 0
    for name, fn in list(vars(module).items()):
        if not (name.startswith("test_") and callable(fn)):
            continue
        params = getattr(fn, "_params", [])
        names = [[n.strip() for n in argnames.split(",")] for argnames, _ in params]
        for combo in itertools.product(*[values for _, values in params]):
            kwargs = {}
            for argnames, value in zip(names, combo):
                kwargs.update(zip(argnames, value if len(argnames) > 1 else (value,)))
            label = f"{name}[{'-'.join(map(str, combo))}]" if combo else name
            if module_skip or getattr(fn, "_skip", None):
                skipped += 1
                print(f"SKIPPED {label}: {module_skip or fn._skip}")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                if "tmp_path" in inspect.signature(fn).parameters:
                    kwargs["tmp_path"] = Path(tmp)
                gens = [f() for f in autouse]
                try:
                    for g in gens:
                        next(g, None)
                    fn(**kwargs)
                    passed += 1
                    print(f"PASSED {label}", flush=True)
                except _Skip as exc:
                    skipped += 1
                    print(f"SKIPPED {label}: {exc}")
                except Exception:
                    failed += 1
                    print(f"FAILED {label}")
                    traceback.print_exc()
                finally:
                    for g in gens:
                        next(g, None)
    return passed, failed, skipped


@section("gpu tests")
def gpu_tests(args):
    if not torch.cuda.is_available() and not args.dry_run:
        raise RuntimeError("CUDA is not available")
    if importlib.util.find_spec("pytest") is None or args.no_pytest:
        passed, failed, skipped = _run_without_pytest("test_gpu")
        line = f"{passed} passed, {failed} failed, {skipped} skipped (pytest stand-in)"
        if args.dry_run:  # the gpu tests all skip without CUDA: show the stand-in running tests that do run
            p2, f2, s2 = _run_without_pytest("test_memory")
            failed += f2
            line += f"; stand-in on tests/test_memory.py: {p2} passed, {f2} failed, {s2} skipped"
        if failed:
            raise AssertionError(line)
        return line
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-6000:], proc.stderr[-2000:])
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or ["no output"]
    if proc.returncode != 0:
        raise AssertionError(last[0])
    return last[0]


# ---------------------------------------------------------------------------------------------- 2. pipelines
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from snnconv.config import register_configs, validate

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    validate(cfg)
    return cfg


@section("pipelines")
def pipelines(args, out: Path):
    from snnconv.runner import run

    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = [f"device={device}", f"checkpoint_dir={out / 'checkpoints'}", "logger=none"]
    if args.dry_run:
        common += ["T=[1,2]", "train.epochs=1", "train.limit_batches=2", "data.limit_test=64"]
    parts = []
    for method in ("baseline", "offset_spike", "ftbc", "ftbc_offset_spike"):
        small = ["method.iterations=1", "method.batches=1"] if args.dry_run and "ftbc" in method else []  # FTBC's keys
        res = run(compose([*common, f"method={method}", *small]), out / method, progress=False)
        acc = res["snn"]["acc"]
        shown = "/".join(f"{acc[t]:.1f}" for t in list(acc)[:: max(1, len(acc) // 3)])
        parts.append(f"{method} {shown} ({sum(res['timing_s'].values()):.0f} s)")
        print(f"{method}: ANN {res['ann']['acc']:.2f} %, SNN {acc}, timing {res['timing_s']}, "
              f"chunk {res.get('time_chunk')}, numerics {res.get('numerics', {}).get('peak_memory_gb')} GiB peak")
    return "digits SNN acc % at a few T: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------------- 3. bench
@section("simulation benchmark")
def bench(args):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_simulation.py"), "--chunks", "1,8,32"]
    if args.dry_run:
        cmd += ["--images", "20", "--batch", "10", "--T", "4", "--chunks", "1,4"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ,
                                                                                "PYTHONPATH": str(ROOT / "src")})
    print(proc.stdout, proc.stderr[-2000:])
    if proc.returncode:
        raise RuntimeError(f"bench_simulation.py exited {proc.returncode}")
    rows = [ln.split("|") for ln in proc.stdout.splitlines() if "|" in ln and ln.split("|")[0].strip().isdigit()]
    return "SNN(T)/(T x ANN) per chunk: " + ", ".join(f"{c.strip()}: {r.strip()}" for c, r in rows)


# -------------------------------------------------------------------------------------------------- 4. memory
@section("memory planner")
def memory(args):
    import functools as ft

    from snnconv.ann import QCFS
    from snnconv.models import create_model
    from snnconv.snn import convert
    from snnconv.snn.memory import GiB, device_budget, plan_simulation, predicted_peak, profile_network

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, T, batch, classes = (224, 128, 100, 1000) if not args.dry_run else (32, 8, 4, 10)
    torch.manual_seed(0)
    ann = create_model("vgg16", act_layer=ft.partial(QCFS, L=16, init_threshold=1.0), num_classes=classes,
                       in_chans=3, img_size=size, stem="imagenet").to(device).eval()
    profile = profile_network(ann, (3, size, size))
    x = torch.randn(batch, 3, size, size, device=device)
    snn = convert(ann, x[:1])
    if device.type == "cuda":
        budget = device_budget(device, args.memory_fraction)
    else:  # dry run: a budget that forces micro-batches of half the batch
        budget = predicted_peak(profile, batch, batch // 2, 1, T)
    plan = plan_simulation(profile, batch, T, budget, max_chunk=T, what="the VGG16 check")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        snn(x, T, plan.chunk, micro_batch=plan.micro_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    measured = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    line = (f"VGG16 {size}x{size}, batch {batch}, T={T}: chunk {plan.chunk}, micro-batch {plan.micro_batch}, "
            f"predicted peak {plan.peak / GiB:.2f} GiB of budget {budget / GiB:.2f} GiB, ")
    line += (f"measured {measured / GiB:.2f} GiB (predicted/measured {plan.peak / measured:.2f}), {seconds:.1f} s"
             if measured else "measured n/a (no CUDA)")
    if measured and measured > plan.peak:
        raise AssertionError("measured peak above the prediction: " + line)
    return line


# ----------------------------------------------------------------------------------------------------- 5. amp
@section("bf16 vs fp32 training")
def amp(args):
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    from snnconv.ann import QCFS
    from snnconv.config import TrainConfig
    from snnconv.models import create_model
    from snnconv.train import train_ann

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, batch = (60, 128) if not args.dry_run else (2, 8)
    data = TensorDataset(torch.randn(steps * batch, 3, 32, 32), torch.randint(0, 100, (steps * batch,)))
    loader = DataLoader(data, batch_size=batch, shuffle=True, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))
    parts = []
    for arch in ("resnet20", "vgg16"):
        rates = {}
        for amp_on, channels_last in ((False, False), (True, False), (True, True)):
            cfg = OmegaConf.structured(TrainConfig(epochs=1, amp=amp_on, channels_last=channels_last, save_every=0))
            model = create_model(arch, act_layer=QCFS, num_classes=100, in_chans=3, img_size=32).to(device)
            train_ann(model, loader, OmegaConf.merge(cfg, {"limit_batches": 5}), device, progress=False)  # warm up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_ann(model, loader, cfg, device, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[(amp_on, channels_last)] = steps * batch / (time.perf_counter() - start)
        fp32, bf16, bf16_cl = rates[(False, False)], rates[(True, False)], rates[(True, True)]
        parts.append(f"{arch} fp32 {fp32:.0f} img/s, bf16 {bf16:.0f} ({bf16 / fp32:.2f}x), "
                     f"bf16+channels_last {bf16_cl:.0f} ({bf16_cl / fp32:.2f}x)")
    return "; ".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="toy scale on any device: checks the script, not the GPU")
    p.add_argument("--out", default=str(ROOT / "outputs" / "gpu-check"))
    p.add_argument("--memory-fraction", type=float, default=0.8)
    p.add_argument("--no-pytest", action="store_true", help="run the gpu tests with the stand-in even if pytest is here")
    args = p.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    configure_numerics(allow_tf32=False, deterministic=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu_tests(args)
    pipelines(args, out)
    bench(args)
    memory(args)
    amp(args)
    rec = numerics_record(device)
    print("\n" + "=" * 100)
    print(f"gpu-check summary{' (DRY RUN: toy scale, numbers mean nothing)' if args.dry_run else ''}: "
          f"{rec['device_name']}, torch {torch.__version__}, CUDA {rec.get('cuda')}, cuDNN {rec.get('cudnn')}, "
          f"TF32 off, {time.perf_counter() - start:.0f} s in total")
    for name, status, seconds, line in SUMMARY:
        print(f"  {status:4} {name:22} {seconds:6.1f} s  {line}")
    print("=" * 100)
    return 0 if all(status == "ok" for _, status, _, _ in SUMMARY) else 1


if __name__ == "__main__":
    sys.exit(main())
