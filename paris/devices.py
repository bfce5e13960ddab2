"""Which device and precision a process computes with: shared by training and data preparation
(the encoders), so both pick CUDA and bf16 by the same rules."""

from __future__ import annotations

from pathlib import Path

import torch

from paris.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """`auto`: the fastest device here. A device this machine lacks is the user's mistake (a
    CUDA setting on a CPU node): one error line, and on the cluster a Job that fails at once."""
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r}: this machine has no CUDA device (use auto or cpu, or a GPU node pool)")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps': this machine has no Apple GPU (use auto or cpu)")
    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _cpu_has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 where it is fast: CUDA with bf16 support, or a CPU with AMX tiles."""
    if mode == "no":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_amx():
        return torch.bfloat16
    return None
