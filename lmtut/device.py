"""Which device a run uses, in one place: ``default_device()``, honouring ``LMTUT_DEVICE``.

``LMTUT_DEVICE=cpu`` keeps everything on the CPU on a GPU machine (the tests' CPU path); ``cuda`` or ``cuda:N``
asks for a GPU and fails clearly where there is none. Unset, the first GPU is used when there is one.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

ENV_DEVICE = "LMTUT_DEVICE"


class DeviceError(RuntimeError):
    """A device was asked for that this machine does not have."""


def default_device() -> torch.device:
    """``$LMTUT_DEVICE`` if set (``cpu``, ``cuda``, ``cuda:N``), else ``cuda`` when available, else ``cpu``."""
    name = os.environ.get(ENV_DEVICE, "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{ENV_DEVICE}={name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{ENV_DEVICE}={name!r}: lmtut runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{ENV_DEVICE}={name!r} but PyTorch sees no CUDA GPU here "
                              f"(torch {torch.__version__}); unset it or set {ENV_DEVICE}=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{ENV_DEVICE}={name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def describe_device(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name and the threads PyTorch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    threads = torch.get_num_threads()
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name}, {threads} thread{'s' * (threads > 1)}"
