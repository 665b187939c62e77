"""Chapter 6: learning-rate policies with warmup (NeMo's ``get_lr_policy``), on ``torch.optim.lr_scheduler.LambdaLR``.

A policy is a function ``step -> multiplier`` of the base learning rate. Every policy starts with a linear warmup
from ~0 to 1 over ``warmup_steps`` (or ``warmup_ratio * total_steps``), then:

- ``constant``: stays at 1;
- ``cosine`` (NeMo's ``CosineAnnealing``): half a cosine from 1 down to ``min_lr_ratio`` at ``total_steps``;
- ``linear`` (NeMo's ``WarmupAnnealing``): a straight line from 1 down to ``min_lr_ratio``;
- ``inverse_sqrt`` (Vaswani et al., 2017): ``sqrt(warmup_steps / step)`` after the warmup.

``total_steps`` is the run's own length, so the schedule ends when training ends (NeMo's schedule reached 0
after 50,000 steps while training went on).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Policy = Callable[[int], float]
ALIASES = {
    "constant": "constant", "constantwithwarmup": "constant",
    "cosine": "cosine", "cosineannealing": "cosine",
    "linear": "linear", "warmupannealing": "linear",
    "inverse_sqrt": "inverse_sqrt", "inversesquarerootannealing": "inverse_sqrt",
}


def get_lr_policy(
    name: str,
    total_steps: int,
    warmup_ratio: float | None = None,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> Policy:
    """The multiplier function of policy ``name`` for a run of ``total_steps`` optimizer steps."""
    key = ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"unknown lr_policy {name!r}; choose one of constant, cosine, linear, inverse_sqrt")
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps is not None and warmup_ratio is not None:
        raise ValueError("give warmup_steps or warmup_ratio, not both")
    if warmup_ratio is not None and not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must lie in [0, 1), got {warmup_ratio}")
    warmup = warmup_steps if warmup_steps is not None else int(round((warmup_ratio or 0.0) * total_steps))
    decay_steps = max(total_steps - warmup, 1)

    def policy(step: int) -> float:  # step counts from 0: the multiplier for the (step + 1)-th update
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if key == "constant":
            return 1.0
        if key == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / max(step, 1))
        progress = min((step - warmup) / decay_steps, 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if key == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return policy


def build_scheduler(optimizer: torch.optim.Optimizer, policy: Policy) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, policy)
