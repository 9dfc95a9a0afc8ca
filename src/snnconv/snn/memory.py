"""Device-memory planning for a simulation: the time chunk and micro-batch that fit a byte budget.

The estimate comes from the network's layer shapes, found by one forward of a single image on the meta device
(`profile_network`: no weights are read, no memory is used, so it runs for an ImageNet VGG16 on any machine).
Per image, in bytes (fp32):

    state   membrane potentials of every spiking layer (kept for the whole simulation)
    static  outputs of the static prefix (the layers before the first activation, computed once per simulation)
    step    max over leaf layers of (input + output) plus the largest output (a residual block keeps its input
            alive while its branch runs): what one time step adds while it flows through the network
    neuron  the largest spiking layer (a method's per-step working tensors are a few copies of it)
    input   the image

and `weights` (parameters and buffers, one copy). A simulation of `steps` steps of a batch of B images run as
micro-batches of b images with chunks of k steps (the first chunk holding max(k, first_chunk)) then peaks at

    peak = 2 weights (ANN and SNN both resident) + B input
           + b (state (1 + state_copies) + static + max(k, first_chunk) step + neuron_copies neuron + 2 steps classes 4)

(`predicted_peak`; the last term is the [steps, b, classes] output and its concatenation). This is an upper
bound of what PyTorch's allocator holds (torch.cuda.max_memory_allocated), not of cuDNN workspaces or allocator
fragmentation: the budget is a fraction (`snn.memory_fraction`) of the free memory to leave room for those.
`make gpu-check` prints the prediction next to the measured peak.

`plan_simulation` picks the largest chunk in [1, max_chunk] whose peak fits the budget; when even the smallest
chunk of the whole batch does not fit, it splits the batch into the largest micro-batch that fits. Results do not
depend on either choice: the neuron carries its state across chunks and samples are independent
(tests/test_memory.py). The one exception is FTBC calibration, whose update at (layer, t) uses the whole batch's
channel mean before the re-fire: micro-batches of one batch would all have to be resident at every (layer, t),
which saves nothing, so FTBC refuses a batch that does not fit and names the batch size that does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.func import functional_call

from snnconv import SnnconvError
from snnconv.ann.base import SourceActivation
from snnconv.utils import eval_mode

GiB = 1024**3


@dataclass(frozen=True)
class MemoryProfile:
    """Bytes per image (fp32) from a meta-device pass; see the module docstring."""

    weights: int
    state: int
    static: int
    step: int
    neuron: int
    input: int
    classes: int


@dataclass(frozen=True)
class SimPlan:
    """chunk: steps per call; micro_batch: images per simulation (= the batch when it fits);
    peak: predicted bytes (`predicted_peak`); budget: bytes allowed (None = unlimited)."""

    chunk: int
    micro_batch: int
    peak: int
    budget: int | None


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0 or isinstance(m, SourceActivation)]


def profile_network(model: nn.Module, input_shape: tuple[int, ...]) -> MemoryProfile:
    """Layer shapes of `model` (an ANN with SourceActivation layers, on any device, weights untouched) for one
    image of `input_shape` [C, H, W], by a forward on the meta device (parameters and buffers replaced by meta
    tensors through torch.func.functional_call)."""
    sizes: list[tuple[bool, int, int]] = []  # (is activation, input bytes, output bytes) in forward order

    def nbytes(t) -> int:
        return t.numel() * 4 if isinstance(t, torch.Tensor) else 0  # the simulation runs in fp32

    def hook(module, args, out):
        sizes.append((isinstance(module, SourceActivation), sum(nbytes(a) for a in args), nbytes(out)))

    handles = [m.register_forward_hook(hook) for _, m in _leaves(model)]
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
    try:
        with torch.no_grad(), eval_mode(model):
            out = functional_call(model, meta, (torch.empty(1, *input_shape, device="meta"),))
    finally:
        for h in handles:
            h.remove()
    acts = [i for i, (is_act, _, _) in enumerate(sizes) if is_act]
    if not acts:
        raise SnnconvError("the network has no spiking layer (no SourceActivation ran in its forward)")
    return MemoryProfile(
        weights=sum(v.numel() * v.element_size() for v in tensors.values()),
        state=sum(sizes[i][2] for i in acts),
        static=sum(o for _, _, o in sizes[: acts[0]]),
        step=max(i + o for _, i, o in sizes) + max(o for _, _, o in sizes),
        neuron=max(sizes[i][2] for i in acts),
        input=4 * math.prod(input_shape),
        classes=out.shape[-1],
    )


def predicted_peak(
    p: MemoryProfile,
    batch: int,
    micro_batch: int,
    chunk: int,
    steps: int,
    first_chunk: int = 0,
    neuron_copies: int = 0,
    state_copies: int = 0,
) -> int:
    """Upper bound (bytes) of the allocator's peak for one simulation; see the module docstring."""
    k = min(steps, max(chunk, first_chunk, 1))
    per_image = (
        p.state * (1 + state_copies) + p.static + k * p.step + neuron_copies * p.neuron + 2 * steps * p.classes * 4
    )
    return 2 * p.weights + batch * p.input + micro_batch * per_image


def plan_simulation(
    p: MemoryProfile,
    batch: int,
    steps: int,
    budget: int | None,
    max_chunk: int,
    chunk: int = 0,
    first_chunk: int = 0,
    neuron_copies: int = 0,
    state_copies: int = 0,
    what: str = "the simulation",
) -> SimPlan:
    """The chunk and micro-batch for `batch` images over `steps` steps within `budget` bytes (None = no limit).

    chunk > 0 is kept as given (the user's snn.time_chunk); chunk = 0 picks the largest in [1, max_chunk] that fits.
    The micro-batch is the batch unless the smallest chunk does not fit, then the largest that fits. Raises
    SnnconvError when one image at the smallest chunk does not fit (naming the fix)."""

    def peak(k: int, b: int) -> int:
        return predicted_peak(p, batch, b, k, steps, first_chunk, neuron_copies, state_copies)

    candidates = [min(chunk, steps)] if chunk > 0 else list(range(max(1, min(max_chunk, steps)), 0, -1))
    if budget is None:
        return SimPlan(candidates[0], batch, peak(candidates[0], batch), None)
    for k in candidates:
        if peak(k, batch) <= budget:
            return SimPlan(k, batch, peak(k, batch), budget)
    k = candidates[-1]
    if peak(k, 1) > budget:
        raise SnnconvError(
            f"{what} needs {peak(k, 1) / GiB:.2f} GiB for one image at time chunk {max(k, first_chunk)} but the "
            f"budget is {budget / GiB:.2f} GiB; raise snn.memory_fraction or snn.memory_budget_gb, lower T or "
            "data.img_size, or use a device with more memory"
        )
    lo, hi = 1, batch - 1  # the largest micro-batch that fits (the peak grows with it)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if peak(k, mid) <= budget else (lo, mid - 1)
    micro = lo
    # with a micro-batch, a longer chunk may fit again: take the largest
    for k2 in candidates:
        if peak(k2, micro) <= budget:
            return SimPlan(k2, micro, peak(k2, micro), budget)
    return SimPlan(k, micro, peak(k, micro), budget)  # pragma: no cover - k fits by construction


def device_budget(device: torch.device, fraction: float, budget_gb: float = 0.0) -> int | None:
    """Bytes a simulation's peak (`predicted_peak`, resident weights included) may reach on `device`: `budget_gb`
    GiB when > 0 (any device, e.g. to test the planner), else on CUDA what PyTorch holds now plus `fraction` of
    the free memory (after returning PyTorch's cached blocks), and None (no limit) elsewhere."""
    if budget_gb > 0:
        return int(budget_gb * GiB)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        return int(fraction * free) + torch.cuda.memory_allocated(device)  # the peak counts what is resident
    return None
