"""Chapter 3: causal multi-head self-attention (Vaswani et al., 2017, section 3.2).

``attention_reference`` is the plain-math version the chapter derives,
softmax(Q K^T / sqrt(d_head) + mask) V; ``CausalSelfAttention`` runs the same computation through
``F.scaled_dot_product_attention``, which picks a fused kernel (FlashAttention, memory-efficient attention) on GPUs.
The tests check that both give the same numbers, and that they match ``torch.nn.MultiheadAttention``.
Asked with ``need_weights=True``, the module computes its output with the reference math instead and returns the
attention weights too: the maps that chapter 3 draws come from the model itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmtut.model_config import TransformerLMConfig
from lmtut.rotary import apply_rotary, rotary_angles


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(length, length) boolean mask, True where query i may attend to key j, that is j <= i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def attention_mask(input_mask: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor | None:
    """The causal mask combined with a key padding mask, shaped (batch, 1, T, T) for broadcasting over heads.

    ``input_mask`` is (batch, T) and True at real tokens. A query may always attend to itself, so that no row is
    fully masked (that would give NaN); the outputs at padding positions are ignored anyway. Returns None when
    there is no padding mask: the attention then uses ``is_causal=True``, the fastest path.
    """
    if input_mask is None:
        return None
    keys = input_mask[:, None, None, :].bool()  # (B, 1, 1, T)
    diagonal = torch.eye(length, dtype=torch.bool, device=device)
    return causal_mask(length, device) & (keys | diagonal)


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out: returns (output, attention weights).

    q, k, v: (..., T, d_head); mask: boolean, broadcastable to (..., T, T), True where attending is allowed
    (None: causal).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., T, T)
    if mask is None:
        mask = causal_mask(q.size(-2), q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


@dataclass
class KVCache:
    """One layer's keys and values of the tokens read so far, (B, heads, T_past, d_head) each (None: none yet)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(-2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' keys and values; return all of them."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask: one fused Q/K/V projection, heads, output projection.

    With ``positions="rope"`` the queries and keys are turned by their positions (``lmtut.rotary``); with
    ``qk_norm`` each head's queries and keys are RMS-normalized first (with a learned scale each).
    """

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        self.num_attn_heads, self.d_head = config.num_attn_heads, config.d_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.out = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.attn_dropout = config.attn_dropout
        self.rotary = config.positions == "rope"
        self.q_norm = nn.RMSNorm(config.d_head) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.d_head) if config.qk_norm else None

    def positioned(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k after the optional QK-norm and rotary positions, the first token at position ``offset``."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:
            positions = torch.arange(offset, offset + q.size(-2), device=q.device)
            cos, sin = rotary_angles(positions, self.d_head)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, d_model) -> q, k, v, each (B, heads, T, d_head)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_attn_heads, self.d_head).permute(2, 0, 3, 1, 4)
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, d_head) -> (B, T, d_model) through the output projection."""
        B, _, T, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, d_model); mask: from :func:`attention_mask` (None: causal only). Returns (output, None).

        ``need_weights=True`` returns ``(output, weights)`` instead, with the (B, heads, T, T) weights of the
        reference math (no attention dropout: for looking at, not for training), as ``nn.MultiheadAttention`` does.
        """
        q, k, v = self.split_heads(x)
        q, k = self.positioned(q, k)
        if need_weights:
            y, weights = attention_reference(q, k, v, mask)
            return self.merge_heads(y), weights
        dropout = self.attn_dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.merge_heads(y), None

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Attention of the new tokens ``x`` (B, T_new, d_model) over the cached ones and themselves, causally; the
        new keys and values are added to ``cache``. For generation: eval mode, no padding."""
        q, k, v = self.split_heads(x)
        past = cache.length
        q, k = self.positioned(q, k, offset=past)
        k, v = cache.append(k, v)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new query i sees every cached key and the new keys up to itself
            T_new = q.size(-2)
            allowed = torch.ones(T_new, past + T_new, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.merge_heads(y)
