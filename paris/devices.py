"""Which device and precision a process computes with: shared by training and data preparation
(the encoders), so both pick CUDA and bf16 by the same rules.

CPU features are read at run time, never assumed: machines of one kind differ (AMX on some,
AVX-512 BF16 on others, neither on a few), so the CPU precision default is a table keyed by
the bf16 unit found here, filled in by measurement (bench/train_step.py --precision-table;
the figures are in bench/README.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


# Flag names as /proc/cpuinfo spells them.
AMX = "amx_bf16"
AVX512_BF16 = "avx512_bf16"
AVX512 = "avx512f"


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def bf16_kind(self) -> str:
        """The fastest bf16 matmul unit: "amx", "avx512_bf16" or "none"."""
        if AMX in self.flags:
            return "amx"
        if AVX512_BF16 in self.flags:
            return "avx512_bf16"
        return "none"


def parse_cpuinfo(text: str) -> CpuInfo:
    model, flags = "unknown", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model, flags)


@functools.cache
def cpu_info() -> CpuInfo:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: no flags known, so no bf16 is assumed
        return CpuInfo("unknown", frozenset())


# Autocast precision on the CPU, by the bf16 unit found. Measured with bench/train_step.py:
# - avx512_bf16 (AMD EPYC, no AMX): bf16 autocast ran the DiT-S/2 step 2.0x faster than fp32
#   and the digits' tiny expert 1.5x faster (bench/README.md, "precision by CPU feature");
# - none: emulated bf16 (ONEDNN_MAX_CPU_ISA=AVX512_CORE on the same machine) ran slower than
#   fp32, so fp32 stays;
# - amx: not measurable on the machines of this project; AMX tiles are faster at bf16 than
#   AVX-512 BF16, so bf16 is kept, as before.
CPU_PRECISION: dict[str, torch.dtype | None] = {"amx": torch.bfloat16, "avx512_bf16": torch.bfloat16, "none": None}


def cpu_autocast_dtype(info: CpuInfo | None = None) -> torch.dtype | None:
    return CPU_PRECISION[(info or cpu_info()).bf16_kind]


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA: fp32 master weights, tensor-core speed."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 where it is fast: CUDA with bf16 support, or a CPU whose bf16 unit measured faster
    than fp32 (CPU_PRECISION)."""
    if mode == "no":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return cpu_autocast_dtype()
    return None


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """At most `n` CPU threads for torch and for numpy's BLAS/OpenMP pools, restored after.

    Small models (the digits demo's experts, the judge's MLP) gain nothing from a second
    thread, and on a machine whose cores are busy with other processes OpenMP's barriers wait
    for a thread that is not running: sampling the digits demo with 2 threads at load average
    10 took 95-160 s of wall time and 33-42 CPU-s, with 1 thread 6-7 s and 2.6 CPU-s
    (bench/README.md, "The demo")."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)
