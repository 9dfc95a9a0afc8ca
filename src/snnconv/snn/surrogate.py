"""The spike's local gradient for training through time: LocalZO (stochastic, sparse) and surrogate shapes.

The forward pass of a spike is the Heaviside step of the IF neuron, s = 1[m >= theta], exactly as evaluation
computes it. Its derivative is zero almost everywhere, so training replaces dH/du by a local gradient g(u) of the
threshold-normalised argument

    u = (m - theta) / theta        (dimensionless; delta = 0.5 means "half a threshold" in every layer),

and backpropagates dL/dm = dL/ds * g(u) / theta (and, when the threshold is trained, dL/dtheta = -dL/ds * g(u) *
m / theta^2, from u = m/theta - 1). Rules, all of which integrate to 1 over u:

- ``LocalZO(dist, delta, samples)`` (Mukhoty et al., "Direct Training of SNN using Local Zeroth Order Method",
  NeurIPS 2023; official code BhaskarMukhoty/LocalZO ``models/layers.py::ZO``): the two-point zeroth-order
  estimate [H(u + delta z) - H(u - delta z)] / (2 delta) * z averaged over M = ``samples`` draws z_j, i.e.

      g(u) = (1/M) sum_j |z_j| / (2 delta) * 1[|u| < delta |z_j|]   (evaluated as |z_j| > |u| / delta),

  with fresh z per neuron, per time step and per sample from a unit-variance ``dist``: normal N(0, 1), uniform on
  [-sqrt 3, sqrt 3] or Laplace with scale 1/sqrt 2. g is exactly 0 wherever |u| >= delta * max_j |z_j|: most
  neurons get no gradient at all (the backward sparsity the paper exploits with a sparse kernel; this dense
  implementation only measures it). Draws come from a ``torch.Generator`` (seeded by the caller: the run's seed).
- ``Surrogate(shape, delta, alpha)``, deterministic: ``gauss`` = E_z[g(u)] for normal z in closed form
  (a Gaussian of standard deviation delta), ``sigmoid`` alpha * sig(alpha u)(1 - sig(alpha u)) (SpikingJelly's
  ``surrogate.Sigmoid``; alpha defaults to the LocalZO SparseGrad code's sqrt(1/0.4262)/delta), ``atan``
  (alpha/2) / (1 + (pi alpha u / 2)^2) (SpikingJelly's ``surrogate.ATan``; alpha defaults to
  2 / (delta sqrt(2 pi)), whose peak equals gauss's).

``expected_localzo(u, delta, dist)`` gives E_z[g(u)] = (1/delta) * int_{|u|/delta}^inf z lambda(z) dz in closed
form for the three distributions (the table in specs/localzo_finetune.md; ``gauss`` uses the normal one).

Errors: ``SnnconvError`` for an unknown distribution / shape or a non-positive delta, samples or alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from snnconv import SnnconvError

DISTRIBUTIONS = ("normal", "uniform", "laplace")
SHAPES = ("gauss", "sigmoid", "atan")
SQRT3 = math.sqrt(3.0)
SQRT2 = math.sqrt(2.0)


def expected_localzo(u: torch.Tensor, delta: float, dist: str) -> torch.Tensor:
    """E_z[g(u)] of LocalZO in closed form, elementwise. u: any shape (threshold units); returns u's shape.

    normal:  exp(-u^2 / (2 delta^2)) / (delta sqrt(2 pi))
    uniform: (3 - u^2/delta^2) / (4 sqrt(3) delta) for |u| < sqrt(3) delta, else 0
    laplace: (|u|/delta + 1/sqrt 2) exp(-sqrt(2) |u| / delta) / (2 delta)
    """
    a = u.abs() / delta
    if dist == "normal":
        return torch.exp(-0.5 * a * a) / (delta * math.sqrt(2 * math.pi))
    if dist == "uniform":
        return torch.where(a < SQRT3, (3 - a * a) / (4 * SQRT3 * delta), torch.zeros_like(a))
    if dist == "laplace":
        return (a + 1 / SQRT2) * torch.exp(-SQRT2 * a) / (2 * delta)
    raise SnnconvError(f"finetune.dist={dist!r} is not one of {', '.join(DISTRIBUTIONS)}")


class LocalGradient:
    """A rule g(u) for the spike's local gradient. Subclasses implement ``__call__(u) -> g`` (same shape)."""

    name = "local_gradient"

    def __call__(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class LocalZO(LocalGradient):
    """LocalZO's stochastic local gradient (module docstring). ``generator`` must live on the device of the
    tensors it is used with (a CPU generator for CPU training)."""

    name = "localzo"

    def __init__(self, delta: float = 0.5, samples: int = 5, dist: str = "normal", generator=None):
        if delta <= 0 or samples < 1:
            raise SnnconvError(f"LocalZO needs finetune.delta > 0 and finetune.samples >= 1, got {delta}, {samples}")
        if dist not in DISTRIBUTIONS:
            raise SnnconvError(f"finetune.dist={dist!r} is not one of {', '.join(DISTRIBUTIONS)}")
        self.delta, self.samples, self.dist = float(delta), int(samples), dist
        self.generator = generator

    def draw_abs(self, shape: tuple[int, ...], device, dtype=torch.float32) -> torch.Tensor:
        """|z| for `shape` i.i.d. draws of the unit-variance distribution (|z| is all the rule needs):
        half-normal, uniform on [0, sqrt 3], or exponential with rate sqrt 2 (|Laplace(1/sqrt 2)|, drawn as
        -log(1 - U) / sqrt 2: 5x faster on CPU than Tensor.exponential_)."""
        g = self.generator
        if self.dist == "normal":
            return torch.randn(shape, generator=g, device=device, dtype=dtype).abs_()
        uniform = torch.rand(shape, generator=g, device=device, dtype=dtype)
        if self.dist == "uniform":
            return uniform.mul_(SQRT3)
        return uniform.neg_().log1p_().div_(-SQRT2)

    def weights(self, u: torch.Tensor, z_abs: torch.Tensor) -> torch.Tensor:
        """g(u) from given draws |z| [M, *u.shape] (overwritten): mean_j |z_j| / (2 delta) * 1[|z_j| > |u|/delta]
        (|u| < delta |z_j| written with one division per neuron instead of one product per draw)."""
        a = u.abs() / self.delta
        z_abs.masked_fill_(z_abs <= a, 0.0)
        return z_abs.sum(0).div_(2 * self.delta * z_abs.shape[0])

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.weights(u, self.draw_abs((self.samples, *u.shape), u.device, u.dtype))


class Surrogate(LocalGradient):
    """A deterministic surrogate g(u): ``gauss`` (LocalZO's normal expectation), ``sigmoid`` or ``atan``."""

    name = "surrogate"

    def __init__(self, shape: str = "gauss", delta: float = 0.5, alpha: float | None = None):
        if shape not in SHAPES:
            raise SnnconvError(f"finetune.surrogate={shape!r} is not one of {', '.join(SHAPES)}")
        if delta <= 0 or (alpha is not None and alpha <= 0):
            raise SnnconvError(f"surrogate needs finetune.delta > 0 and finetune.alpha > 0, got {delta}, {alpha}")
        self.shape, self.delta = shape, float(delta)
        if alpha is None:
            alpha = {"gauss": 0.0, "sigmoid": math.sqrt(1 / 0.4262) / delta, "atan": 2 / (delta * math.sqrt(2 * math.pi))}[shape]
        self.alpha = float(alpha)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        if self.shape == "gauss":
            return expected_localzo(u, self.delta, "normal")
        if self.shape == "sigmoid":
            sg = torch.sigmoid(self.alpha * u)
            return self.alpha * sg * (1 - sg)
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * u) ** 2)


class BackwardSparsity:
    """Per key (a layer): neuron-steps whose local gradient g was exactly 0, and all neuron-steps, summed over
    backward calls. Counts stay on the tensors' device until read (no synchronisation per step)."""

    def __init__(self):
        self.zero: dict = {}
        self.total: dict = {}

    def add(self, key, g: torch.Tensor) -> None:
        z = (g == 0).sum()
        self.zero[key] = self.zero[key] + z if key in self.zero else z
        self.total[key] = self.total.get(key, 0) + g.numel()

    def share(self, key) -> float:
        """Share of zero local gradients for `key` (0..1); nan before any backward call."""
        n = self.total.get(key, 0)
        return float(self.zero[key]) / n if n else float("nan")


class _SpikeFunction(torch.autograd.Function):
    """s = 1[m >= theta] forward; local gradient g((m - theta)/theta) backward (module docstring)."""

    @staticmethod
    def forward(ctx, m, theta, rule, sparsity, key):
        ctx.rule, ctx.sparsity, ctx.key = rule, sparsity, key
        ctx.save_for_backward(m, theta)
        return (m >= theta).to(m.dtype)

    @staticmethod
    def backward(ctx, grad):
        m, theta = ctx.saved_tensors
        g = ctx.rule((m - theta) / theta)
        if ctx.sparsity is not None:
            ctx.sparsity.add(ctx.key, g)
        gs = grad * g
        grad_m = gs / theta if ctx.needs_input_grad[0] else None
        grad_theta = None
        if ctx.needs_input_grad[1]:
            grad_theta = (-gs * m / (theta * theta)).sum_to_size(theta.shape)
        return grad_m, grad_theta, None, None, None


def spike(
    m: torch.Tensor,
    theta: torch.Tensor,
    rule: LocalGradient,
    sparsity: BackwardSparsity | None = None,
    key=None,
) -> torch.Tensor:
    """Differentiable spike: forward (m >= theta) as 0/1 in m's dtype, the value `IFNeuron.step` computes;
    backward through `rule` (module docstring). m: [B, ...] pre-reset membrane potential; theta: a scalar tensor
    or one broadcastable per channel ([C, 1, 1]). `sparsity` (optional) counts zero local gradients under `key`."""
    return _SpikeFunction.apply(m, theta, rule, sparsity, key)


@dataclass
class TrainingSpike:
    """What `SimContext.train` holds while fine-tuning: the local-gradient rule, whether the reset is detached
    (SpikingJelly's ``detach_reset``: v = m - theta * s.detach()), and the optional sparsity counter."""

    rule: LocalGradient
    detach_reset: bool = True
    sparsity: BackwardSparsity | None = None
