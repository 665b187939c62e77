"""Chapter 3: the causal Transformer encoder (NeMo's ``TransformerEncoderNM``; Vaswani et al., 2017).

Token embedding scaled by sqrt(d_model), positions added (sinusoidal or learned), dropout, then ``num_layers``
blocks of causal self-attention and a position-wise feed-forward network, each wrapped in a residual connection
with layer normalization. Pre-norm (norm, sublayer, add; a final norm after the last block) is the default: it
trains stably without a long warmup. Post-norm (add, then norm) is the original paper's arrangement.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmtut.attention import CausalSelfAttention, attention_mask

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def sinusoidal_positions(max_length: int, d_model: int) -> torch.Tensor:
    """(max_length, d_model) table: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    position = torch.arange(max_length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table


class FeedForward(nn.Sequential):
    """Position-wise feed-forward network: Linear(d_model, d_inner), activation, dropout, Linear(d_inner, d_model)."""

    def __init__(self, d_model: int, d_inner: int, dropout: float = 0.0, activation: str = "relu"):
        super().__init__(nn.Linear(d_model, d_inner), ACTIVATIONS[activation](), nn.Dropout(dropout), nn.Linear(d_inner, d_model))


class TransformerBlock(nn.Module):
    """Self-attention and feed-forward sublayers, each with dropout, a residual connection and a layer norm."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_inner: int,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        ffn_dropout: float = 0.0,
        pre_norm: bool = True,
        activation: str = "relu",
    ):
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads, attn_dropout)
        self.ffn = FeedForward(d_model, d_inner, ffn_dropout, activation)
        self.drop = nn.Dropout(dropout)  # on each sublayer's output, before the residual add

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), mask))
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


class TransformerEncoder(nn.Module):
    """Embeddings, positions and a stack of causal Transformer blocks: (B, T) ids -> (B, T, d_model) states."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_attn_heads: int,
        d_inner: int,
        max_sequence_length: int,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
        emb_dropout: float = 0.1,
        ffn_dropout: float = 0.0,
        pre_norm: bool = True,
        positions: str = "sinusoidal",
        activation: str = "relu",
    ):
        super().__init__()
        self.d_model, self.max_sequence_length = d_model, max_sequence_length
        self.embedding = nn.Embedding(vocab_size, d_model)
        if positions == "sinusoidal":
            self.register_buffer("position_table", sinusoidal_positions(max_sequence_length, d_model), persistent=False)
            self.position_embedding = None
        else:
            self.position_embedding = nn.Embedding(max_sequence_length, d_model)
        self.emb_drop = nn.Dropout(emb_dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(d_model, num_attn_heads, d_inner, dropout, attn_dropout, ffn_dropout, pre_norm, activation)
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()

    def positions(self, length: int) -> torch.Tensor:
        if self.position_embedding is not None:
            return self.position_embedding.weight[:length]
        return self.position_table[:length]

    def forward(self, input_ids: torch.Tensor, input_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: (B, T) int64; input_mask: (B, T), True at real tokens (None: no padding)."""
        T = input_ids.size(1)
        if T > self.max_sequence_length:
            raise ValueError(f"sequence of {T} tokens is longer than max_sequence_length={self.max_sequence_length}")
        x = self.embedding(input_ids) * math.sqrt(self.d_model) + self.positions(T)
        x = self.emb_drop(x)
        mask = attention_mask(input_mask, T, input_ids.device)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)
