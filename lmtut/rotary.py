"""Rotary position embeddings (Su et al., 2021, *RoFormer: Enhanced Transformer with Rotary Position Embedding*).

Instead of adding a position vector to the embeddings, rotary positions rotate each query and key: the head's
``d_head`` features are taken as ``d_head / 2`` pairs, and pair i at position p is turned by the angle
``p * theta_i``, with ``theta_i = base^(-2i / d_head)``. A dot product of a query at m with a key at n then depends
on the positions only through ``m - n``: attention sees relative positions, and nothing is learned.
"""

from __future__ import annotations

import torch


def rotary_angles(positions: torch.Tensor, d_head: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of the angles ``p * theta_i`` for each position p of ``positions`` (T,): two (T, d_head / 2)."""
    if d_head % 2:
        raise ValueError(f"rotary positions need an even head width, got {d_head}")
    theta = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32, device=positions.device) / d_head)
    angles = positions.float()[:, None] * theta[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the feature pairs (0, 1), (2, 3), ... of ``x`` (..., T, d_head) by the angles of ``cos``/``sin``
    (T, d_head / 2): (a, b) -> (a cos - b sin, a sin + b cos), in ``x``'s dtype."""
    a, b = x[..., 0::2].float(), x[..., 1::2].float()
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
