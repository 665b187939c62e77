"""Chapter 8: dropout for small data, as AWD-LSTM (Merity et al., 2018) regularized its LSTM.

``WordDropout`` is the embedding dropout of Gal & Ghahramani (2016) (AWD-LSTM's ``dropoute``): it drops whole word
*types*, so that a dropped word vanishes from every position of the batch where it occurs, and the model cannot
lean on any one word's vector. ``LockedDropout`` is their variational dropout (AWD-LSTM's ``LockedDropout``): one
mask per sequence, shared by all its time steps, instead of a fresh mask per position (Srivastava et al., 2014).
Both rescale what they keep by ``1 / (1 - p)``, as ``nn.Dropout`` does, and both are the identity in ``eval()``
mode. Neither draws a random number when it is the identity, so an option left off changes no run.
"""

from __future__ import annotations

import torch
from torch import nn


def check_probability(name: str, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {p}")


class WordDropout(nn.Module):
    """Drop word types from the embedding: ``(B, T, d)`` embeddings of ``(B, T)`` ids -> the same shape.

    One keep-or-drop draw per row of the embedding matrix (a vocabulary of ``num_embeddings`` words) for each call,
    that is for each batch: a dropped word's vector is zero at every one of its positions, a kept one is scaled by
    ``1 / (1 - p)``. Multiplying the looked-up vectors by the rows' mask equals looking them up in the masked matrix
    (AWD-LSTM's ``embedded_dropout``), without building that matrix.
    """

    def __init__(self, num_embeddings: int, p: float = 0.0):
        super().__init__()
        check_probability("word_dropout", p)
        self.num_embeddings, self.p = num_embeddings, p

    def row_mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(num_embeddings,) scales: 0 for a dropped word, 1 / (1 - p) for a kept one."""
        keep = torch.empty(self.num_embeddings, device=device, dtype=dtype).bernoulli_(1 - self.p)
        return keep / (1 - self.p)

    def forward(self, embedded: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return embedded
        return embedded * self.row_mask(embedded.device, embedded.dtype)[input_ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared across time: ``(B, T, d)`` -> the same shape.

    The mask is ``(B, 1, d)``: position ``t`` of sequence ``b`` loses the same features as every other position of
    ``b``. A fresh mask per position (``nn.Dropout``) lets the next layers average the noise away over the window;
    a locked one removes a feature for the whole sequence (Gal & Ghahramani, 2016).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        check_probability("dropout", p)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty(x.size(0), 1, x.size(2), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * mask / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def sequence_dropout(p: float, locked: bool) -> nn.Module:
    """The dropout of a ``(B, T, d)`` stream of states: ``LockedDropout`` when ``locked``, else ``nn.Dropout``."""
    return LockedDropout(p) if locked else nn.Dropout(p)
