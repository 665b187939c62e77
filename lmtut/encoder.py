"""Chapter 3: the causal Transformer encoder (NeMo's ``TransformerEncoderNM``; Vaswani et al., 2017).

Token embedding scaled by sqrt(d_model), positions added (sinusoidal or learned), dropout, then ``num_layers``
blocks of causal self-attention and a position-wise feed-forward network, each wrapped in a residual connection
with layer normalization. Pre-norm (norm, sublayer, add; a final norm after the last block) is the default: it
trains stably without a long warmup. Post-norm (add, then norm) is the original paper's arrangement.

Chapter 8 adds the regularization of ``lmtut.regularization``: word dropout on the embedding lookup, dropout on the
final states (``output_dropout``), and with ``locked_dropout`` one mask per sequence for the embedding, residual
and output dropouts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmtut.attention import CausalSelfAttention, KVCache, attention_mask
from lmtut.model_config import ACTIVATIONS, TransformerLMConfig
from lmtut.regularization import WordDropout, sequence_dropout


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

    def __init__(self, config: TransformerLMConfig):
        bias = config.bias
        super().__init__(nn.Linear(config.d_model, config.d_inner, bias=bias), ACTIVATIONS[config.activation](),
                         nn.Dropout(config.ffn_dropout), nn.Linear(config.d_inner, config.d_model, bias=bias))


class SwiGLU(nn.Module):
    """The gated feed-forward of Shazeer (2020): ``down(dropout(silu(gate(x)) * up(x)))``, its hidden width
    ``config.ffn_hidden`` (2/3 of ``d_inner``: three matrices with the parameters of two)."""

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        hidden, bias = config.ffn_hidden, config.bias
        self.gate = nn.Linear(config.d_model, hidden, bias=bias)
        self.up = nn.Linear(config.d_model, hidden, bias=bias)
        self.down = nn.Linear(hidden, config.d_model, bias=bias)
        self.drop = nn.Dropout(config.ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(F.silu(self.gate(x)) * self.up(x)))


class TransformerBlock(nn.Module):
    """Self-attention and feed-forward sublayers, each with dropout, a residual connection and a layer norm."""

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.norm1, self.norm2 = config.norm_layer(), config.norm_layer()
        self.attn = CausalSelfAttention(config)
        self.ffn = SwiGLU(config) if config.activation == "swiglu" else FeedForward(config)
        self.drop = sequence_dropout(config.dropout, config.locked_dropout)  # on each sublayer's output, before the add

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, d_model) -> (the same shape, the attention weights when ``need_weights``, else None)."""
        if self.pre_norm:
            a, weights = self.attn(self.norm1(x), mask, need_weights)
            x = x + self.drop(a)
            x = x + self.drop(self.ffn(self.norm2(x)))
        else:
            a, weights = self.attn(x, mask, need_weights)
            x = self.norm1(x + self.drop(a))
            x = self.norm2(x + self.drop(self.ffn(x)))
        return x, weights

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The block on new tokens only, its attention reading and extending ``cache`` (eval mode, generation)."""
        if self.pre_norm:
            x = x + self.attn.forward_cached(self.norm1(x), cache)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attn.forward_cached(x, cache))
        return self.norm2(x + self.ffn(x))


class TransformerEncoder(nn.Module):
    """Embeddings, positions and a stack of causal Transformer blocks: (B, T) ids -> (B, T, d_model) states."""

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        self.d_model, self.max_sequence_length = config.d_model, config.max_sequence_length
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.position_embedding = None  # rotary positions (positions="rope") live in the attention
        if config.positions == "sinusoidal":
            table = sinusoidal_positions(config.max_sequence_length, config.d_model)
            self.register_buffer("position_table", table, persistent=False)
        elif config.positions == "learned":
            self.position_embedding = nn.Embedding(config.max_sequence_length, config.d_model)
        self.additive_positions = config.positions != "rope"
        self.word_drop = WordDropout(config.padded_vocab_size, config.word_dropout)
        self.emb_drop = sequence_dropout(config.emb_dropout, config.locked_dropout)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.final_norm = config.norm_layer() if config.pre_norm else nn.Identity()
        self.output_drop = sequence_dropout(config.output_dropout, config.locked_dropout)  # before the softmax layer

    def positions(self, length: int, offset: int = 0) -> torch.Tensor | float:
        """What is added to the embeddings of positions ``offset`` to ``offset + length`` (0 with rotary positions)."""
        if not self.additive_positions:
            return 0.0
        if self.position_embedding is not None:
            return self.position_embedding.weight[offset : offset + length]
        return self.position_table[offset : offset + length]

    def new_cache(self) -> list[KVCache]:
        """An empty key/value cache, one per layer, for :meth:`forward_cached`."""
        return [KVCache() for _ in self.layers]

    @torch.no_grad()
    def forward_cached(self, input_ids: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """The hidden states of new tokens (B, T_new) that follow the ``cache``'s, which they extend: generation's
        incremental forward (eval mode, no padding). The positions continue where the cache ends."""
        past, T = cache[0].length, input_ids.size(1)
        if past + T > self.max_sequence_length:
            raise ValueError(f"{past + T} tokens exceed max_sequence_length={self.max_sequence_length}: start a new "
                             "cache on the last window")
        x = self.embedding(input_ids) * math.sqrt(self.d_model) + self.positions(T, offset=past)
        for layer, layer_cache in zip(self.layers, cache):
            x = layer.forward_cached(x, layer_cache)
        return self.final_norm(x)

    def forward(self, input_ids: torch.Tensor, input_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids: (B, T) int64; input_mask: (B, T), True at real tokens (None: no padding).

        ``need_weights=True`` also returns each layer's (B, heads, T, T) attention weights.
        """
        T = input_ids.size(1)
        if T > self.max_sequence_length:
            raise ValueError(f"sequence of {T} tokens is longer than max_sequence_length={self.max_sequence_length}")
        x = self.word_drop(self.embedding(input_ids), input_ids) * math.sqrt(self.d_model) + self.positions(T)
        x = self.emb_drop(x)
        mask = attention_mask(input_mask, T, input_ids.device)
        maps = []
        for layer in self.layers:
            x, weights = layer(x, mask, need_weights)
            maps.append(weights)
        x = self.output_drop(self.final_norm(x))
        return (x, maps) if need_weights else x
