"""What a result file records about where it came from: the commit, PyTorch and the device."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from lmtut.device import describe_device


def git_commit() -> str | None:
    """The checkout's commit (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def provenance(device: torch.device) -> dict[str, Any]:
    """The device, its name, PyTorch's version and the commit, for ``results.json`` and benchmark files."""
    return {"device": str(device), "device_name": describe_device(device), "torch": torch.__version__,
            "git_commit": git_commit()}
