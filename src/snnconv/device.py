"""Numerics of the device a run uses, set from the config and recorded in results.json.

`configure_numerics(allow_tf32, deterministic)` sets PyTorch's global switches once per run:
- allow_tf32 (default false): TF32 tensor-core math for fp32 matmuls and convolutions on Ampere and later. This
  torch enables it for cuDNN convolutions by default; the default here turns it off, because a TF32 convolution
  rounds the membrane's input to a 10-bit mantissa and moves spikes that sit near the threshold, which breaks
  the equalities the tests check (chunked == whole-sequence, streaming FTBC == reference).
- deterministic (default false): cuDNN's deterministic algorithms, no autotuning, `torch.use_deterministic_algorithms`
  (warn-only: an op without a deterministic kernel warns instead of stopping a long run) and the cuBLAS workspace
  setting it needs. Off: `cudnn.benchmark` autotunes every convolution shape once (the simulation calls a few
  shapes many times).
`numerics_record(device)` returns what results.json stores under `numerics`: device name, CUDA / cuDNN versions,
the switches as they are, and `peak_memory_gb(device)` the allocator's peak since `reset_peak_memory(device)`.
"""

from __future__ import annotations

import os
import platform

import torch


def configure_numerics(allow_tf32: bool = False, deterministic: bool = False) -> None:
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = bool(deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    """GiB the CUDA allocator held at most since `reset_peak_memory` (None on other devices)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 1024**3, 3)
    return None


def numerics_record(device: torch.device) -> dict:
    """Device name, library versions and precision switches for results.json."""
    record: dict = {
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "peak_memory_gb": peak_memory_gb(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(
            device_name=torch.cuda.get_device_name(device),
            compute_capability=f"{props.major}.{props.minor}",
            total_memory_gb=round(props.total_memory / 1024**3, 2),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return record
