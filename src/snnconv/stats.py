"""Spike statistics, synaptic operations (SOPs), conversion error and compute-energy estimates, read at every T
in the list from the ONE T_max simulation that gives the accuracies (specs/spike_statistics_energy.md).

Two parts:

1. `build_plan(ann, example)` (once per run, before any training: it needs only the architecture). The ANN is
   traced with torch.fx (the graph library torch ships; activations are leaves, the SNN keeps their names) and
   shape-propagated on one example. For every spiking layer l and every route its spikes take to a consumer
   (a Conv2d / Linear, an identity shortcut into an add, another spiking layer, the analog output) it computes
   the per-neuron FAN-OUT map F[c, h, w] = number of synaptic accumulations one spike of that neuron triggers,
   the exact rule of the spec: the derivative of sum(consumer_ones(path_ones(S))) with respect to S, where
   conv_ones is the convolution with an all-ones kernel (same stride / padding / dilation / groups), pools are
   sum pools (AvgPool2d with divisor 1: the 1/k^2 folds into the next weights), Linear is sum * out_features,
   BN / Dropout / Identity / Flatten / reshapes pass through. So borders, strides, padding, pooling before a conv
   and 1x1 stride-2 shortcuts (odd positions reach nothing) are exact, and the SOPs of a spike map S are
   <S, F> (tests/test_stats.py: = sum(conv2d(S, ones)), SpikingJelly's SynOpCounter rule, on random maps).
   Weight layers before the first spiking layer see only the static image: MACs, counted ONCE per image
   (`StaticMemo` runs them once per simulation). ANN MACs = every Conv2d / Linear, dense (BN folded).

2. `SpikeCounter` (during evaluation): a forward hook on every `IFNeuron` accumulates its output theta*s per
   step (one in-place add) and, at each T to read, takes the BINARY spike counts n = round(acc / theta) (per
   channel theta too) and adds, summed over the batch: spikes, SOPs = <sum_b n, F> per consumer (float64,
   exact), and, against the ANN activation a of the same layer and image (forward hooks on the ANN's
   activations during the ANN forward `evaluate` runs anyway), the squared error (theta*n/T - a)^2 and the
   count of neurons with n == clip(floor(a T / theta + 1/2), 0, T) (the psi = 0 share: the ANN's activation
   quantised to T steps, = the QCFS level when T = L).

Work reported apart from the synaptic SOPs (per image): neuron updates (N_l per step: 1 integrate + 1 compare;
plus 1 reset per spike), bias additions (N_l per step when a non-static weight layer with a bias or a BN feeds
layer l, the folded constant current; N_l more per step with FTBC's beta[t]; the static first layer's bias is in
its memoised current), the output layer's per-step bias and the temporal accumulation of the logits.

COS (a controller on the neuron with `presim_window` = rho, `presim_passes` and a running `presim_spikes`
count, see `snnconv.methods.offset_spike`): before its T steps a layer pre-simulates rho steps `passes` times on
its first rho inputs. Counted as real work: the spikes it emits then (`presim_spikes`; they are not transmitted:
COS releases a layer's output only after the shift), its neuron updates (rho * passes * N_l) and the SOPs that
re-deliver its first rho inputs for each pass (`presim_sops` = passes x the SOPs of steps < rho on the routes
into it, attributed to the emitting layer like every SOP here; 0 for a layer fed by the static prefix, whose
current is memoised). The extra diagnostic pre-simulation COS runs for its psi table is not counted.

Energy (Horowitz, ISSCC 2014, and SpikingJelly's presets): E_SNN = E_MAC * MAC_first + E_AC * SOPs (with the
COS re-delivery SOPs), E_ANN = E_MAC * MAC_ANN, per image, in pJ. Compute only: memory traffic, addressing and
data movement are ignored, which favours the SNN (Lemaire et al.; Yan et al. arXiv 2409.08290).

Shapes: a neuron output is [k*B, ...] per chunk of k steps (time-major); fan-out maps are [C, H, W] (or [F])
per image. Errors: `build_plan` raises SnnconvError naming `stats=false` for a graph it cannot count (a weight
layer fed by another weight layer's analog output inside the spiking part, a max-pool on spikes, an op it does
not know on a spike route).
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from snnconv import SnnconvError, distributed
from snnconv.ann.base import SourceActivation
from snnconv.snn.neuron import IFNeuron

# (E_MAC, E_AC) in pJ per operation.
ENERGY_PRESETS: dict[str, tuple[float, float]] = {
    "fp32-45nm": (4.6, 0.9),  # Horowitz ISSCC 2014, 45 nm: fp32 mult 3.7 + add 0.9
    "fp16": (1.5, 0.4),  # SpikingJelly ComputeEnergyCostConfig
    "int8": (0.23, 0.03),  # SpikingJelly ComputeEnergyCostConfig
}
CAVEAT = "energy: compute-only, no memory traffic (E = E_MAC*MACs + E_AC*SOPs per image)"
CONVENTIONS = {
    "sops": "binary spikes (output / theta), exact rule: each spike x the outputs it reaches (conv with ones)",
    "first_layer": "MACs once per image (static image, memoised prefix)",
    "bn": "folded into the weights and the bias",
    "presim_counted": True,
    "presim": "COS: pre-simulation spikes and neuron updates, plus passes x re-delivery of the first rho inputs",
    "energy": "E_SNN = E_MAC*MAC_first + E_AC*(SOPs + presim SOPs); E_ANN = E_MAC*MAC_ANN; per image, pJ",
    "energy_with_overheads": "E_SNN + E_AC*(bias ACs + neuron integrate ACs + reset ACs + output ACs)",
    "firing_rate": "spikes per neuron per step over the T counted steps (pre-simulation apart)",
    "psi_zero_share": "% of neurons whose spike count at T equals clip(floor(a*T/theta + 1/2), 0, T), a = ANN activation",
    "mse": "mean over neurons and images of (theta*count/T - a)^2, activation units squared",
}

_WEIGHT = (nn.Conv2d, nn.Linear)
_PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
_RESHAPES = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "flatten", "view", "reshape",
             "contiguous", "squeeze", "unsqueeze"}
_MEANS = {torch.mean, "mean"}
_DROPOUTS = {F.dropout, "dropout"}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (SourceActivation, IFNeuron)) or super().is_leaf_module(m, qualname)


@dataclass
class Route:
    """One way a spiking layer's spikes reach a consumer: `target` (a spiking layer's name or "output") gets
    `fanout` synaptic accumulations per spike of each neuron. `mode` says how (e.g. "avgpool2/s2>conv3x3/s1/p1").
    fanout is stored compressed: [] when equal for every neuron (linear layers), [1, H, W] when equal across
    channels (ungrouped convolutions), else the per-image shape; float32, integer-valued (< 2^24, exact)."""

    target: str
    mode: str
    fanout: torch.Tensor

    def full(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The fan-out of every neuron, [per-image shape]."""
        return self.fanout.expand(shape)

    def sops(self, per_neuron: torch.Tensor) -> torch.Tensor:
        """Synaptic operations triggered by per-neuron spike counts [per-image shape] (float64): a 0-d float64."""
        f = self.fanout
        if f.dim() == 0:
            return per_neuron.sum() * f.double()
        if f.shape[0] == 1 and per_neuron.shape[0] != 1:
            per_neuron = per_neuron.sum(0, keepdim=True)
        return torch.dot(per_neuron.reshape(-1), f.reshape(-1).double())


@dataclass
class LayerPlan:
    name: str
    shape: tuple[int, ...]  # per image
    neurons: int
    routes: list[Route] = field(default_factory=list)
    static_input: bool = False  # fed only by weight layers before the first spiking layer
    input_bias: bool = False  # a non-static weight layer with a bias or BN feeds it: N per step bias ACs

    @property
    def fanout_mode(self) -> str:
        return "; ".join(f"{r.mode}->{r.target}" for r in self.routes) or "none"


@dataclass
class Plan:
    layers: dict[str, LayerPlan]
    mac_first: int  # per image, once
    mac_ann: int  # per image
    output_neurons: int  # logits per image
    output_bias: bool

    def to(self, device) -> Plan:
        for layer in self.layers.values():
            for r in layer.routes:
                r.fanout = r.fanout.to(device)
        return self


def _fmt_pair(v) -> str:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


def _describe(node: fx.Node, mod: nn.Module | None) -> str:
    if isinstance(mod, nn.Conv2d):
        kh, kw = mod.kernel_size
        s = f"conv{kh}x{kw}/s{_fmt_pair(mod.stride)}/p{_fmt_pair(mod.padding) if not isinstance(mod.padding, str) else mod.padding}"
        return s + (f"/g{mod.groups}" if mod.groups > 1 else "")
    if isinstance(mod, nn.Linear):
        return f"linear{mod.out_features}"
    if isinstance(mod, nn.AvgPool2d):
        return f"avgpool{_fmt_pair(mod.kernel_size)}/s{_fmt_pair(mod.stride)}"
    if isinstance(mod, nn.AdaptiveAvgPool2d) or node.target in _MEANS:
        return "globalpool"
    if node.target in _ADDS:
        return "identity"
    return ""


def _adaptive_sum(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pool times each cell's region size = the sum over the region (torch's regions:
    [floor(i H / oh), ceil((i + 1) H / oh)))."""
    H, W = x.shape[-2:]

    def sizes(n, o):
        return torch.tensor([math.ceil((i + 1) * n / o) - (i * n) // o for i in range(o)], dtype=x.dtype)

    area = sizes(H, out_hw[0])[:, None] * sizes(W, out_hw[1])[None, :]
    return F.adaptive_avg_pool2d(x, out_hw) * area.to(x.device)


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise SnnconvError(f"stats: no tensor shape for graph node {node.name}; set stats=false")
    return tuple(meta.shape)


def _ones_op(node: fx.Node, mod: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """The connectivity ("all weights one, pools summing") version of one op on a route, on x [1, ...]."""
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            raise SnnconvError(f"stats: conv {node.target} pads with {mod.padding_mode!r}, not zeros; set stats=false")
        w = x.new_ones(mod.out_channels, mod.in_channels // mod.groups, *mod.kernel_size)
        return F.conv2d(x, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)
    if isinstance(mod, nn.Linear):
        return x.sum(-1, keepdim=True).expand(*x.shape[:-1], mod.out_features)
    if isinstance(mod, nn.AvgPool2d):
        return F.avg_pool2d(x, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, True, divisor_override=1)
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return _adaptive_sum(x, _shape(node)[-2:])
    if isinstance(mod, nn.Flatten):
        return torch.flatten(x, mod.start_dim, mod.end_dim)
    if isinstance(mod, _PASS_MODULES) or node.target in _DROPOUTS:
        return x
    if node.target in _RESHAPES:
        return x.reshape(_shape(node))
    if node.target in _MEANS:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        return x.sum(dim, keepdim=keepdim)
    raise SnnconvError(f"stats: cannot count synaptic operations through {node.format_node()}; set stats=false")


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """spiking | weight | add | pass | output | other"""
    mod = _module(gm, node)
    if isinstance(mod, (SourceActivation, IFNeuron)):
        return "spiking"
    if isinstance(mod, _WEIGHT):
        return "weight"
    if node.op == "output":
        return "output"
    if node.op in ("call_function", "call_method") and node.target in _ADDS:
        return "add"
    if isinstance(mod, _PASS_MODULES) or (
        node.op in ("call_function", "call_method") and node.target in _RESHAPES | _MEANS | _DROPOUTS
    ):
        return "pass"
    return "other"


def _macs(mod: nn.Module, out_shape: tuple[int, ...]) -> int:
    """Dense multiply-accumulates of one weight layer for one image (out_shape has the batch dim 1)."""
    n_out = math.prod(out_shape)
    if isinstance(mod, nn.Conv2d):
        return n_out * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
    return n_out * mod.in_features


def _downstream_target(gm: fx.GraphModule, start: fx.Node) -> tuple[str, bool]:
    """The spiking layer (or "output") whose input the analog value of `start` flows into, and whether a BN
    sits on the way (a folded bias). Raises for a weight layer reached on the way (analog into weights)."""
    targets: set[str] = set()
    bn = False
    stack, seen = list(start.users), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        kind = _kind(gm, node)
        if kind == "spiking":
            targets.add(node.target)
        elif kind == "output":
            targets.add("output")
        elif kind == "weight":
            raise SnnconvError(
                f"stats: weight layer {node.target} consumes the analog output of {start.target} inside the spiking "
                "part; its operations are neither SOPs nor once-per-image MACs; set stats=false"
            )
        elif kind in ("add", "pass"):
            bn |= isinstance(_module(gm, node), (nn.BatchNorm1d, nn.BatchNorm2d))
            stack.extend(node.users)
        else:
            raise SnnconvError(f"stats: cannot follow {node.format_node()} after {start.target}; set stats=false")
    if len(targets) != 1:
        raise SnnconvError(f"stats: the output of {start.target} reaches {sorted(targets)}, expected one spiking layer")
    return targets.pop(), bn


def _fanout(gm: fx.GraphModule, shape: tuple[int, ...], path: list[fx.Node], terminal: fx.Node | None) -> torch.Tensor:
    """d/dS sum(terminal_ones(path_ones(S))) at S = 0 for S of `shape` (per image): the fan-out per neuron,
    compressed as `Route` describes. float32 is exact here: every partial sum is an integer below 2^24."""
    x = torch.zeros((1, *shape), requires_grad=True)
    y = x
    with torch.enable_grad():
        for node in path:
            y = _ones_op(node, _module(gm, node), y)
        if terminal is not None:
            y = _ones_op(terminal, _module(gm, terminal), y)
        y.sum().backward()
    f = x.grad[0].detach()
    if f.max() >= 2**24:
        raise SnnconvError(f"stats: a fan-out of {f.max():.0f} synapses per neuron exceeds exact float32; set stats=false")
    if bool((f == f.reshape(-1)[0]).all()):
        return f.reshape(-1)[0].clone()
    if f.dim() == 3 and bool((f == f[:1]).all()):
        return f[:1].clone()
    return f


@torch.no_grad()
def build_plan(ann: nn.Module, example: torch.Tensor) -> Plan:
    """Trace `ann` (activations = `SourceActivation` leaves) and compute the counting plan. example: [1, C, H, W]
    on the ANN's device (the architecture matters, not the weights; run in eval mode, modes restored)."""
    try:
        graph = _Tracer().trace(ann)
    except Exception as exc:  # a user model torch.fx cannot trace
        raise SnnconvError(f"stats: torch.fx cannot trace the model ({type(exc).__name__}: {exc}); set stats=false") from exc
    gm = fx.GraphModule(ann, graph)
    saved = [(m, m.training) for m in ann.modules()]
    ann.eval()
    try:
        ShapeProp(gm).propagate(example[:1])
    finally:
        for m, training in saved:
            m.training = training

    nodes = list(gm.graph.nodes)
    spiking_above: dict[fx.Node, bool] = {}
    for node in nodes:  # topological order
        spiking_above[node] = any(spiking_above[a] or _kind(gm, a) == "spiking" for a in node.all_input_nodes)

    layers: dict[str, LayerPlan] = {}
    for node in nodes:
        if _kind(gm, node) == "spiking":
            shape = _shape(node)[1:]
            layers[node.target] = LayerPlan(node.target, shape, math.prod(shape))
    if not layers:
        raise SnnconvError("stats: the model has no spiking layer (no activation of an ANN source); set stats=false")

    mac_first = mac_ann = 0
    fed_by: dict[str, list[bool]] = {name: [] for name in [*layers, "output"]}  # per incoming weight route: static?
    output_bias = False
    for node in nodes:
        if _kind(gm, node) != "weight":
            continue
        mod = _module(gm, node)
        macs = _macs(mod, _shape(node))
        mac_ann += macs
        static = not spiking_above[node]
        mac_first += macs if static else 0
        target, bn = _downstream_target(gm, node)
        fed_by[target].append(static)
        has_bias = bn or getattr(mod, "bias", None) is not None
        if not static and has_bias:
            if target == "output":
                output_bias = True
            else:
                layers[target].input_bias = True
    for name, layer in layers.items():
        layer.static_input = bool(fed_by[name]) and all(fed_by[name])

    for node in nodes:
        if _kind(gm, node) != "spiking":
            continue
        layer = layers[node.target]
        stack: list[tuple[fx.Node, list[fx.Node]]] = [(u, []) for u in node.users]
        while stack:
            user, path = stack.pop()
            kind = _kind(gm, user)
            mode = ">".join(filter(None, [_describe(n, _module(gm, n)) for n in path] + [_describe(user, _module(gm, user))]))
            if kind == "pass":
                stack.extend((u, [*path, user]) for u in user.users)
                continue
            if kind == "weight":
                target, _ = _downstream_target(gm, user)
                terminal = user
            elif kind == "add":
                target, _ = _downstream_target(gm, user)
                terminal = None
            elif kind == "spiking":
                target, terminal, mode = user.target, None, mode or "identity"
            elif kind == "output":
                target, terminal, mode = "output", None, mode or "identity"
            else:
                raise SnnconvError(
                    f"stats: cannot count synaptic operations through {user.format_node()} after {node.target}; "
                    "set stats=false"
                )
            layer.routes.append(Route(target, mode or "identity", _fanout(gm, layer.shape, path, terminal)))
    out_nodes = [n for n in nodes if n.op == "output"]
    output_neurons = math.prod(_shape(out_nodes[0].args[0])[1:]) if out_nodes and isinstance(out_nodes[0].args[0], fx.Node) else 0
    return Plan(layers, mac_first, mac_ann, output_neurons, output_bias)


# ----------------------------------------------------------------------------------------------------------
# Counting during evaluation


_COUNT_KEYS = ("spikes", "sops", "sq_err", "psi_zero", "presim_spikes", "presim_sops", "bias_steps")


def _add(store: dict, key, value) -> None:
    store[key] = store[key] + value if key in store else value


def _presim_controllers(neuron: IFNeuron) -> list:
    """The neuron's controllers that pre-simulate (COS: `presim_window`, `presim_passes`, `presim_spikes`)."""
    return [c for c in neuron.controllers if hasattr(c, "presim_window")]


class SpikeCounter:
    """Counts spikes / SOPs / conversion error during evaluation; see the module docstring.

    Use: `counter = SpikeCounter(plan)`; `with counter.attached(snn, ann):` around the evaluation loop; before
    each `snn(...)` call `counter.begin(read_at, batch)` with the T values read from that simulation;
    `summary(preset)` at the end (`summary(preset, totals=sum_over_ranks(counter.totals()))` over ranks). Hooks never change the simulation (they read outputs; tests check accuracy is unchanged).
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        # running sums over images per T (device tensors): layer -> key -> T -> value (sops: T -> target -> value);
        # bias_steps = images x T simulated with a per-step bias (FTBC)
        self.layers: dict[str, dict[str, dict]] = {name: {k: {} for k in _COUNT_KEYS} for name in plan.layers}
        self.images: dict[int, int] = {}
        self._read: set[int] = set()
        self._group: list[int] = []
        self._acc: dict[str, torch.Tensor] = {}
        self._ann: dict[str, torch.Tensor] = {}
        self._presim: dict[str, tuple[int, int]] = {}  # name -> (rho, passes) in the current simulation
        self._presim_seen: dict[str, tuple[int, int]] = {}  # ... in any simulation so far
        self._neurons: dict[str, IFNeuron] = {}
        self._last_read = 0
        self._presim_rho = 0
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._B = 0
        self._reduced = False  # reduce_over_ranks ran

    @contextlib.contextmanager
    def attached(self, snn, ann: nn.Module | None = None):
        neurons = snn.neurons()
        missing = sorted(set(self.plan.layers) ^ set(neurons))
        if missing:
            raise SnnconvError(f"stats: the plan's spiking layers and the SNN's differ ({missing[:3]}...); rebuild the plan")
        self._neurons = neurons
        handles = [n.register_forward_hook(self._hook(name)) for name, n in neurons.items()]
        if ann is not None:
            for name, m in ann.named_modules():
                if name in self.plan.layers and isinstance(m, SourceActivation):
                    handles.append(m.register_forward_hook(self._ann_hook(name)))
        self.plan.to(next(iter(neurons.values())).threshold.device)
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._acc.clear()
            self._ann.clear()
            self._buffers.clear()

    def _ann_hook(self, name: str):
        """Keeps, per batch, -a and clamp(a / theta, 0, 1) of the ANN activation a [B, ...] (what the snapshots
        need: one pass each per T instead of recomputing them)."""

        def fn(_mod, _inp, out):
            a = out.detach().float()
            theta = self._neurons[name].threshold_view(a.dim())
            self._ann[name] = (torch.neg(a), torch.div(a, theta).clamp_(0.0, 1.0))

        return fn

    def begin(self, read_at: Iterable[int], batch: int) -> None:
        """Before a simulation of this batch (`batch` images) that will be read at every T in `read_at`."""
        if self._reduced:
            raise RuntimeError("this SpikeCounter was summed over ranks already; count a new evaluation with a new one")
        self._group = sorted({int(t) for t in read_at})
        self._presim = {}
        for name, neuron in self._neurons.items():
            ctrls = _presim_controllers(neuron)
            if ctrls:
                ctrl = ctrls[0]
                self._presim[name] = (int(ctrl.presim_window), int(ctrl.presim_passes))
                ctrl.presim_spikes = None  # reset the controller's running count
            if neuron.bias.numel():
                for T in self._group:
                    _add(self.layers[name]["bias_steps"], T, batch * T)
        self._presim_seen.update(self._presim)
        rho = {r for r, _ in self._presim.values()}
        if len(rho) > 1:
            raise SnnconvError(f"stats: layers pre-simulate different numbers of steps {sorted(rho)}")
        self._presim_rho = next(iter(rho), 0)
        self._read = set(self._group) | rho
        self._last_read = max(self._read)
        self._B = batch
        for T in self._group:
            self.images[T] = self.images.get(T, 0) + batch
        self._acc.clear()

    def _hook(self, name: str):
        def fn(neuron: IFNeuron, _inp, out):
            if not self._read:
                return
            k = out.shape[0] // self._B
            seq = out.view(k, self._B, *out.shape[1:])
            t0 = neuron.t - k
            if t0 == 0:
                self._acc[name] = torch.zeros_like(seq[0])
                if name in self._presim:
                    self._take_presim(name, neuron)
            acc = self._acc[name]
            for i in range(k):
                t = t0 + i + 1
                if t > self._last_read:
                    break
                acc.add_(seq[i])
                if t in self._read:
                    self._snapshot(name, neuron, t, acc)

        return fn

    def _take_presim(self, name: str, neuron: IFNeuron) -> None:
        ctrl = _presim_controllers(neuron)[0]
        n = ctrl.presim_spikes
        if n is None:
            return
        for T in self._group:
            _add(self.layers[name]["presim_spikes"], T, n.double())
        ctrl.presim_spikes = None

    def _scratch(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two reused buffers of `like`'s shape: fresh large tensors per snapshot cost more than the arithmetic
        on CPU (page faults). Shared by layers of one shape (snapshots run one at a time)."""
        key = (tuple(like.shape), like.dtype, like.device)
        if key not in self._buffers:
            self._buffers[key] = (torch.empty_like(like), torch.empty_like(like))
        return self._buffers[key]

    @torch.no_grad()
    def _snapshot(self, name: str, neuron: IFNeuron, T: int, acc: torch.Tensor) -> None:
        """Counts at T from acc = sum of theta * s over steps 1..T [B, ...]. Nine passes over [B, ...], in
        float32 where exact (integer counts < 2^24), float64 for the per-neuron dot products with the fan-out."""
        layer, counts = self.plan.layers[name], self.layers[name]
        theta = neuron.threshold_view(acc.dim())
        n_buf, f_buf = self._scratch(acc)
        n = torch.div(acc, theta, out=n_buf).round_()  # [B, ...] binary spike counts
        per_neuron = n.sum(0).double()  # [C, H, W], exact: B * T < 2^24
        if T in self._group:
            _add(counts["spikes"], T, per_neuron.sum())
            sops = counts["sops"].setdefault(T, {})
            for r in layer.routes:
                _add(sops, r.target, r.sops(per_neuron))
            ann = self._ann.get(name)
            if ann is not None and ann[0].shape == n.shape:
                neg_a, unit = ann
                d = torch.addcmul(neg_a, n, theta / T, out=f_buf).view(-1)  # theta * n / T - a
                _add(counts["sq_err"], T, torch.dot(d, d).double())
                # psi = 0  <=>  n == floor(T * clamp(a / theta, 0, 1) + 1/2)  <=>  e = n - T * unit in (-1/2, 1/2]
                # <=>  ceil(e - 1/2) == 0
                e = torch.add(n, unit, alpha=-T, out=f_buf).sub_(0.5).ceil_()
                _add(counts["psi_zero"], T, e.numel() - torch.count_nonzero(e))
        if T == self._presim_rho:
            for r in layer.routes:
                rho, passes = self._presim.get(r.target, (0, 0))
                if passes and rho == T:
                    extra = passes * r.sops(per_neuron)
                    for t in self._group:
                        _add(counts["presim_sops"], t, extra)

    def reduce_over_ranks(self) -> None:
        """Several ranks (snnconv.distributed; `evaluate` calls this on every rank after its shard): replace this
        counter's sums by their sums over all ranks. Spike and SOP counts and psi=0 counts are integers (equal to
        one process's); the float64 squared errors differ from one process's only in summation order. A counter
        counts one distributed evaluation: it refuses to count again after this."""
        if not distributed.is_distributed():
            return
        total = distributed.sum_over_ranks(self.totals())
        self.images = dict(total.get("images", {}))
        for name in self.layers:
            got = total.get("layers", {}).get(name, {})
            self.layers[name] = {k: got.get(k, {}) for k in _COUNT_KEYS}
        for seen in distributed.gather_objects(self._presim_seen):
            self._presim_seen.update(seen)
        self._reduced = True

    # ------------------------------------------------------------------------------------------------------
    def totals(self) -> dict:
        """The raw sums {"images": {T: n}, "layers": {name: {key: {T: value}}}}: a tree of numbers and tensors that
        `snnconv.distributed.sum_over_ranks` adds key by key (`reduce_over_ranks`)."""
        return {"images": dict(self.images), "layers": self.layers}

    def summary(self, preset: str = "fp32-45nm", totals: dict | None = None) -> dict:
        """The results.json `stats` section from `totals` (default: this process's `totals()`): per-image numbers
        per T (str keys), conventions stated."""
        if preset not in ENERGY_PRESETS:
            raise SnnconvError(f"energy preset {preset!r} is not one of {', '.join(ENERGY_PRESETS)}")
        plan = self.plan
        totals = totals or self.totals()
        images, counts_of = totals["images"], totals["layers"]
        Ts = sorted(images)
        n_total = sum(layer.neurons for layer in plan.layers.values())
        per_layer = []
        tot = {k: dict.fromkeys(Ts, 0.0) for k in ("spikes", "sops", "presim_spikes", "presim_sops", "bias", "upd",
                                                   "sq_err", "psi_zero")}
        for name, layer in plan.layers.items():
            c = {k: counts_of.get(name, {}).get(k, {}) for k in _COUNT_KEYS}
            rho, passes = self._presim_seen.get(name, (0, 0))
            rec = {"name": name, "neurons": layer.neurons, "fanout_mode": layer.fanout_mode,
                   "spikes": {}, "firing_rate": {}, "sops": {}, "sops_by_target": {}, "bias_acs": {},
                   "neuron_updates": {}, "mse": {}, "psi_zero_share": {}}
            if passes:
                rec.update({"presim_spikes": {}, "presim_sops": {}})
            for T in Ts:
                imgs = images[T]
                spikes = float(c["spikes"].get(T, 0.0)) / imgs
                by_target = {k: float(v) / imgs for k, v in c["sops"].get(T, {}).items()}
                sops = sum(by_target.values())
                bias = (layer.neurons * T if layer.input_bias else 0) + layer.neurons * c["bias_steps"].get(T, 0) / imgs
                upd = layer.neurons * (T + rho * passes)
                rec["spikes"][str(T)] = round(spikes, 4)
                rec["firing_rate"][str(T)] = round(spikes / (layer.neurons * T), 6)
                rec["sops"][str(T)] = round(sops, 2)
                rec["sops_by_target"][str(T)] = {k: round(v, 2) for k, v in by_target.items()}
                rec["bias_acs"][str(T)] = round(bias, 2)
                rec["neuron_updates"][str(T)] = upd
                if T in c["sq_err"]:
                    rec["mse"][str(T)] = float(c["sq_err"][T]) / (imgs * layer.neurons)
                    rec["psi_zero_share"][str(T)] = round(100.0 * float(c["psi_zero"][T]) / (imgs * layer.neurons), 4)
                    tot["sq_err"][T] += float(c["sq_err"][T])
                    tot["psi_zero"][T] += float(c["psi_zero"][T])
                ps = float(c["presim_spikes"].get(T, 0.0)) / imgs
                psops = float(c["presim_sops"].get(T, 0.0)) / imgs
                if passes:
                    rec["presim_spikes"][str(T)] = round(ps, 4)
                    rec["presim_sops"][str(T)] = round(psops, 2)
                for key, v in (("spikes", spikes), ("sops", sops), ("presim_spikes", ps), ("presim_sops", psops),
                               ("bias", bias), ("upd", upd)):
                    tot[key][T] += v
            if not rec["mse"]:
                del rec["mse"], rec["psi_zero_share"]
            per_layer.append(rec)

        out_acs = {T: plan.output_neurons * T * (1 + int(plan.output_bias)) for T in Ts}
        e_mac, e_ac = ENERGY_PRESETS[preset]

        def energy(e_mac: float, e_ac: float) -> dict:
            res = {}
            for T in Ts:
                sops = tot["sops"][T] + tot["presim_sops"][T]
                snn = e_mac * plan.mac_first + e_ac * sops
                ann = e_mac * plan.mac_ann
                over = e_ac * (tot["bias"][T] + tot["upd"][T] + tot["spikes"][T] + tot["presim_spikes"][T] + out_acs[T])
                res[str(T)] = {"snn": round(snn, 1), "ann": round(ann, 1), "ratio": round(snn / ann, 6) if ann else None,
                               "snn_with_overheads": round(snn + over, 1),
                               "ratio_with_overheads": round((snn + over) / ann, 6) if ann else None}
            return res

        section = {
            "images": {str(T): images[T] for T in Ts},
            "per_layer": per_layer,
            "neurons": n_total,
            "mac_first": plan.mac_first,
            "mac_ann": plan.mac_ann,
            "total_spikes": {str(T): round(tot["spikes"][T], 2) for T in Ts},
            "firing_rate": {str(T): round(tot["spikes"][T] / (n_total * T), 6) for T in Ts},
            "total_sops": {str(T): round(tot["sops"][T] + tot["presim_sops"][T], 1) for T in Ts},
            "sops_main": {str(T): round(tot["sops"][T], 1) for T in Ts},
            "bias_acs": {str(T): round(tot["bias"][T], 1) for T in Ts},
            "neuron_updates": {str(T): tot["upd"][T] for T in Ts},
            "output_acs": {str(T): out_acs[T] for T in Ts},
            "energy_pj": energy(e_mac, e_ac),
            "energy_pj_presets": {p: energy(*ENERGY_PRESETS[p]) for p in ENERGY_PRESETS},
            "cost": {"preset": preset, "e_mac": e_mac, "e_ac": e_ac},
            "conventions": dict(CONVENTIONS),
            "caveat": CAVEAT,
        }
        if self._presim_seen:
            section["presim_spikes"] = {str(T): round(tot["presim_spikes"][T], 2) for T in Ts}
            section["presim_sops"] = {str(T): round(tot["presim_sops"][T], 1) for T in Ts}
        if any(tot["sq_err"][T] for T in Ts) or any(tot["psi_zero"][T] for T in Ts):
            section["conversion_error"] = {
                "mse": {str(T): tot["sq_err"][T] / (images[T] * n_total) for T in Ts},
                "psi_zero_share": {str(T): round(100.0 * tot["psi_zero"][T] / (images[T] * n_total), 4) for T in Ts},
            }
        return section
