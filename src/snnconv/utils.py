"""Shared helpers, one copy each, at the bottom of the stack (imports nothing from snnconv but SnnconvError).

- `eval_mode(*modules)`: every submodule in eval mode inside the block, each one's own flag restored after.
- `capture_outputs(modules, fn)`: run `fn()` with forward hooks on named modules, return their outputs.
- `modules_of_type(root, cls)`: {qualified name: module} of one type, in definition order.
- `atomic_write(path, data)` / `atomic_save(obj, path)`: write to a temporary file in the same folder, then
  `os.replace` it onto `path`, so a killed write never leaves a half-written file under the final name.
- `rng_state(generator)` / `set_rng_state(state, generator)`: every RNG a resumed run must continue (torch,
  CUDA, numpy, python, and one extra `torch.Generator`, e.g. a loader's), for training checkpoints.
- `median_time(fn)`: warm up, repeat, median wall time (benchmarks only; timings here vary by about 20 %).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Every submodule of `modules` in eval mode inside the block; each submodule's own `training` flag is
    restored afterwards (restoring only the top-level flag would be wrong: a converted network's wrapper may be
    in train mode while its BatchNorm layers are in eval mode)."""
    saved = [(m, m.training) for root in modules for m in root.modules()]
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def capture_outputs(
    modules: Mapping[str, nn.Module],
    fn: Callable[[], Any],
    transform: Callable[[torch.Tensor], Any] | None = None,
    inputs: bool = False,
    once: bool = True,
    sink: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Run `fn()` with a forward hook on every named module and return {name: captured}.

    Captured is the module's output (or its first positional input when `inputs=True`), passed through
    `transform` (default: detached). With `once=True` a module that runs twice raises RuntimeError (callers that
    need one value per layer and forward rely on it); with `once=False` a list of every call's value is kept.
    With `sink`, each captured value is handed to `sink(name, value)` as it arrives and nothing is kept (streaming
    statistics over many batches). The hooks are removed whatever happens.
    """
    out: dict[str, Any] = {}
    transform = transform or (lambda t: t.detach())

    def hook(name: str):
        def fn_(_mod, args, result=None):
            value = transform(args[0] if inputs else result)
            if sink is not None:
                sink(name, value)
            elif once:
                if name in out:
                    raise RuntimeError(f"module {name!r} runs more than once per forward")
                out[name] = value
            else:
                out.setdefault(name, []).append(value)

        return fn_

    if inputs:
        handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    else:
        handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return out


def modules_of_type(root: nn.Module, cls: type | tuple[type, ...]) -> dict[str, nn.Module]:
    """{qualified name: module} for every submodule of `root` that is an instance of `cls`, definition order."""
    return {n: m for n, m in root.named_modules() if isinstance(m, cls)}


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, `os.replace`). The file gets
    the permissions a plain `open()` would give it (0666 minus the umask), not mkstemp's 0600. Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj)` to `path` atomically (see `atomic_write`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def rng_state(generator: torch.Generator | None = None) -> dict:
    """The states of torch's, CUDA's (when available), numpy's and python's global RNGs and of `generator`."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "loader": generator.get_state() if generator is not None else None,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what `rng_state` returned (CUDA's only on as many devices as saved it)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("loader") is not None and generator is not None:
        generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time (s) of `repeats` calls of fn() after `warmup` untimed calls. Synchronise CUDA inside fn."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
