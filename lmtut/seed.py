"""One helper seeds every random number generator a chapter uses, so that notebooks are deterministic."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every GPU).

    Every notebook calls this once at the top, and the tests rely on it for ``torch.manual_seed``-exact runs.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA on every device
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses (the hash seed of this one is fixed at start)
