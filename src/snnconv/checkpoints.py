"""Reading a user's checkpoint and renaming the published layouts' keys to snnconv's (`ann.checkpoint_format`).

Reading: `torch.load(weights_only=True)` (PyTorch's safe unpickler: tensors and plain containers only). A whole
pickled model, or a checkpoint holding other objects, is read only with `ann.trust_checkpoint=true`
(`weights_only=False` runs the file's pickled code); without it the refusal is one line naming that setting.

Remapping (`remap_state_dict`) is a pure function of the key names, the format and the target model's key set;
no tensor is changed. The strict key / shape check in `snnconv.train.load_state` runs on its result. Layouts
(facts in specs/checkpoint_layouts.md, read from the published repositories):

| format | published code | renaming |
|---|---|---|
| `snnconv` | this project; timm ResNet; torchvision ResNet | none |
| `qcfs` | putshua/ANN_SNN_QCFS (`IF.thresh`) | VGG `layer{b}.{4i+r}` -> `features.{S_b+3i+r}`; ResNet `conv1.{0,1,2}` -> `conv1 / bn1 / act1`, `conv{s+1}_x.{j}.residual_function.{0..4}` -> `layer{s}.{j}.conv1 / bn1 / act1 / conv2 / bn2`, block act `act` -> `act2`, `shortcut` -> `shortcut` (ResNet-20) or `downsample` (timm ResNet-34); `thresh` -> `threshold` |
| `cos` = `qcfs_old` | hzc1208/ANN2SNN_COS, putshua/SNN_conversion_QCFS (`MyFloor.up`) | as `qcfs`, block act `relu`, `up` -> `threshold` |
| `snnc` | yhhhli/SNN_Calibration ImageNet | `vgg16_bn`: as `torchvision`; `resnet34_snn`: none (timm's deep stem: `arch.stem=deep`) |
| `torchvision` | torchvision `resnet*`, `vgg16_bn` | ResNet none; VGG into snnconv's `vgg16` (which has a Flatten at `classifier.0`): `classifier.{0,3,6}` -> `classifier.{1,4,7}` |
| `timm` | timm | none (timm's ResNet is snnconv's `resnet34`; `arch=timm` uses timm's own names) |

`auto` (the default) keeps a state dict whose keys already fit the model, and otherwise detects the layout from
its key patterns (`detect_format`). The quantisation level L of a QCFS / COS network is in no state dict: set
`ann.L` (4 for the CIFAR checkpoints, 16 for the ImageNet VGG16, 8 for the ImageNet ResNet-34; README).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from snnconv import SnnconvError

FORMATS = ("auto", "snnconv", "qcfs", "cos", "qcfs_old", "snnc", "torchvision", "timm")

# Keys a loaded state dict may lack: ReLU-source thresholds are set from calibration images after loading.
OPTIONAL_SUFFIXES = (".threshold",)  # for layout detection only; load_state checks the exact optional keys


def read_checkpoint(path: str | os.PathLike, trust: bool = False, what: str = "ann.checkpoint") -> dict[str, torch.Tensor]:
    """The state dict stored at `path`: a bare state dict, {state_dict|model|net|model_state_dict: ...}, or (with
    trust=True only) a whole pickled nn.Module. DataParallel's `module.` prefixes are stripped.

    Raises SnnconvError (one line naming `what`, the setting or cache file the path came from) for a missing file,
    a file that is no PyTorch checkpoint (random bytes, truncated, empty: PyTorch's multi-line text is reduced to
    its reason), a pickled object without trust=True, or an object holding no state dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise SnnconvError(f"{what}={str(path)!r} does not exist; pass the path of a saved state dict")
    advice = what == "ann.checkpoint"  # a cache file is replaced by the caller, the user has nothing to do
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": multi-line, nothing to act on
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if pickled is None:  # not a pickle torch.save wrote (random bytes, a foreign format)
            raise SnnconvError(
                f"{what}={str(p)!r} is not a PyTorch checkpoint ({_reason(exc)})"
                + ("; pass a file written by torch.save(model.state_dict(), path)" if advice else "")
            ) from exc
        if not trust:
            raise SnnconvError(
                f"{what} {p.name} holds pickled objects ({pickled.group(1)}) that the safe loader refuses"
                + ("; if you trust the file set ann.trust_checkpoint=true (unpickling runs its code), or save "
                   "model.state_dict() instead" if advice else "")
            ) from exc
        obj = _load_trusted(p)
    except Exception as exc:
        raise SnnconvError(
            f"{what}={str(p)!r} is not a readable PyTorch checkpoint ({_reason(exc)})"
            + ("; pass a file written by torch.save(model.state_dict(), path)" if advice else "")
        ) from exc
    return _extract_state_dict(obj, p.name)


def _reason(exc: BaseException) -> str:
    """PyTorch's multi-line load error as a short reason (without its advice for Python programmers)."""
    text = str(exc)
    if isinstance(exc, EOFError) or not text.strip():
        return "the file ends early: empty or truncated"
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    if match:
        text = match.group(1)
    first = " ".join(text.split()).split(". ")[0]
    return f"{type(exc).__name__}: {first[:160]}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _load_trusted(p: Path) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise SnnconvError(
            f"ann.checkpoint {p.name} is a pickled object whose code ({exc.name!r}) is not importable here; put its "
            "repository on PYTHONPATH, or save model.state_dict() with that code and pass the state dict"
        ) from exc
    except Exception as exc:
        raise SnnconvError(f"cannot unpickle ann.checkpoint={str(p)!r}: {type(exc).__name__}: {_first_line(exc)}") from exc


def _extract_state_dict(obj: Any, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in ("state_dict", "model", "net", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), (dict, nn.Module)):
            obj = obj[key]
            obj = obj.state_dict() if isinstance(obj, nn.Module) else obj
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SnnconvError(f"ann.checkpoint {name} holds no state dict; save model.state_dict() and pass that file")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def fits(keys: Iterable[str], target_keys: Iterable[str]) -> bool:
    """True when `keys` are exactly the target's keys, optional threshold buffers aside."""
    keys, target = set(keys), set(target_keys)
    return keys <= target and all(k.endswith(OPTIONAL_SUFFIXES) for k in target - keys)


_REF_VGG = re.compile(r"^layer\d+\.\d+\.(weight|bias|running_mean|running_var|num_batches_tracked|thresh|up)$")
_REF_RESNET = re.compile(r"^conv\d+_x\.\d+\.")


def detect_format(keys: Iterable[str]) -> str:
    """The layout a state dict's key names show: qcfs | cos | snnc | torchvision | timm | snnconv (no pattern)."""
    keys = list(keys)
    if any(k.endswith(".thresh") for k in keys):
        return "qcfs"
    if any(k.endswith(".up") for k in keys):
        return "cos"
    if any(_REF_VGG.match(k) or _REF_RESNET.match(k) for k in keys):
        return "qcfs"  # the reference trees without thresholds (a ReLU network of those repositories)
    if "conv1.6.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "snnc"  # resnet34_snn's deep stem
    if any(k.startswith("pre_logits.") or k.startswith("head.fc.") for k in keys):
        return "timm"
    if "features.0.weight" in keys and "classifier.0.weight" in keys:
        return "torchvision"
    return "snnconv"


def _rename_act(rest: str) -> str:
    """`thresh` / `up` (the reference activations' parameter) -> `threshold`."""
    return re.sub(r"(^|\.)(thresh|up)$", r"\1threshold", rest)


def _vgg_starts(keys: list[str]) -> dict[int, int]:
    """S_b: index in snnconv's `features` of block b's first conv, from the reference keys (3 entries per conv,
    one AvgPool after each block)."""
    convs: dict[int, set[int]] = {}
    for k in keys:
        m = re.match(r"^layer(\d+)\.(\d+)\.", k)
        if m:
            b, idx = int(m.group(1)), int(m.group(2))
            convs.setdefault(b, set()).add(idx // 4)
    starts, s = {}, 0
    for b in sorted(convs):
        starts[b] = s
        s += 3 * len(convs[b]) + 1
    return starts


def _remap_reference(state: dict, target_keys: set[str]) -> dict:
    """The QCFS / COS / old-QCFS module trees -> snnconv (VGG16, ResNet-20) or timm ResNet (ResNet-34)."""
    keys = list(state)
    starts = _vgg_starts(keys)
    shortcut = "downsample" if any(".downsample." in k for k in target_keys) else "shortcut"
    block_parts = {"0": "conv1", "1": "bn1", "2": "act1", "3": "conv2", "4": "bn2"}
    stem_parts = {"0": "conv1", "1": "bn1", "2": "act1"}
    out = {}
    for k, v in state.items():
        new = k
        if m := re.match(r"^layer(\d+)\.(\d+)\.(.+)$", k):
            b, idx, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            i, r = divmod(idx, 4)
            if r == 3:
                raise SnnconvError(f"checkpoint key {k!r} is a parameter of a Dropout slot; not a QCFS/COS VGG")
            new = f"features.{starts[b] + 3 * i + r}.{_rename_act(rest)}"
        elif m := re.match(r"^conv1\.(\d)\.(.+)$", k):
            new = f"{stem_parts[m.group(1)]}.{_rename_act(m.group(2))}"
        elif m := re.match(r"^conv(\d+)_x\.(\d+)\.(.+)$", k):
            stage, j, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
            if m2 := re.match(r"^residual_function\.(\d)\.(.+)$", rest):
                rest = f"{block_parts[m2.group(1)]}.{_rename_act(m2.group(2))}"
            elif m2 := re.match(r"^shortcut\.(.+)$", rest):
                rest = f"{shortcut}.{m2.group(1)}"
            elif m2 := re.match(r"^(act|relu)\.(.+)$", rest):
                rest = f"act2.{_rename_act(m2.group(2))}"
            new = f"layer{stage}.{j}.{rest}"
        elif k.startswith("classifier."):
            new = _rename_act(k)
        out[new] = v
    return out


def _remap_torchvision_vgg(state: dict, target_keys: set[str]) -> dict:
    """torchvision / SNNC `vgg*_bn` into snnconv's VGG, whose classifier starts with a Flatten."""
    if "classifier.0.weight" in target_keys or "classifier.1.weight" not in target_keys:
        return dict(state)
    shift = {"0": "1", "3": "4", "6": "7"}
    out = {}
    for k, v in state.items():
        m = re.match(r"^classifier\.(\d+)\.(.+)$", k)
        out[f"classifier.{shift.get(m.group(1), m.group(1))}.{m.group(2)}" if m else k] = v
    return out


def remap_state_dict(state: dict, fmt: str, target_keys: Iterable[str]) -> tuple[dict, str]:
    """Rename `state`'s keys from layout `fmt` (one of FORMATS) to the target model's. Returns (renamed state,
    the format used: `auto` resolves to the detected one). Tensors are passed through unchanged."""
    if fmt not in FORMATS:
        raise SnnconvError(f"ann.checkpoint_format={fmt!r} is not one of {', '.join(FORMATS)}")
    target = set(target_keys)
    if fmt == "auto":
        fmt = "snnconv" if fits(state, target) else detect_format(state)
    if fmt in ("qcfs", "cos", "qcfs_old"):
        return _remap_reference(state, target), fmt
    if fmt in ("torchvision", "snnc"):
        return _remap_torchvision_vgg(state, target), fmt
    return dict(state), fmt
