"""Where models run and with how many threads: `--device cpu|cuda|auto`, `--dtype`, and the torch thread count.

The measures are always computed in float32, whatever precision the model runs in.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import InputError, OptionError
from ..names import DEFAULT_DEVICE, DEFAULT_DTYPE, DEVICES, DTYPE_NAMES

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
"""The torch dtype of each precision name."""


def resolve_device(device: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """The torch device that `device` names: `auto` is CUDA if available, else CPU; CUDA without a GPU is an error."""
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in DEVICES:
        raise OptionError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)} (or cuda:N)")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise InputError(f"device {name} was asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return chosen


def resolve_dtype(dtype: str | torch.dtype = DEFAULT_DTYPE) -> torch.dtype:
    """The torch dtype that `dtype` names (float32, float16 or bfloat16), else a one-line `InputError`."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise OptionError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup (v2) CPU quota where one is set."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    return cpus if quota == "max" else max(1, min(cpus, math.ceil(int(quota) / int(period))))


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads`, or by default to torch's own choice (one per physical core)
    capped by the CPUs this process may actually use, so a container with a CPU quota is not oversubscribed."""
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1; got {threads}")
    chosen = threads if threads is not None else min(torch.get_num_threads(), usable_cpus())
    if chosen != torch.get_num_threads():
        torch.set_num_threads(chosen)
    return chosen
