"""The language model, whole, in one file (chapters 3, 4, 7 and 8).

Read top to bottom: the one config every part receives (:class:`TransformerLMConfig`),
rotary positions, causal self-attention and its KV cache, chapter 8's dropouts, the
block and the encoder, the classifiers (tied, full or adaptive softmax) and
:class:`TransformerLM`, whose one ``forward(input_ids, targets, kv_cache)`` serves
training, scoring and generation, as nanochat's ``GPT.forward`` does.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (NeMo's ``8 * ceil(vocab_size /
    8)``)."""
    if multiple < 1:
        raise ValueError(f"the multiple must be a positive integer, got {multiple}")
    return multiple * math.ceil(n / multiple)


# --------------------------------------------------------------------------------------
# Chapters 3, 4, 7 and 8: the model's hyperparameters, in one dataclass that owns its
# defaults and checks.
#
# Every module of the model receives this one object (``TransformerLM(config)``,
# ``TransformerEncoder(config)``, ``TransformerBlock(config)``,
# ``CausalSelfAttention(config)``), as in nanoGPT: a hyperparameter is named once and
# read where it is used. The defaults are the NeMo tutorial's model (NeMo 0.x's
# ``transformer_lm.py``: 12 layers, d_model 384); the presets of ``lmtut.config``
# override them.

#: by name: the feed-forward's and the classifier's; "swiglu" gates the feed-forward
#: with SiLU (Shazeer, 2020)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swiglu": nn.SiLU}
POSITIONS = ("sinusoidal", "learned", "rope")
NORMS = {"layer": nn.LayerNorm, "rms": nn.RMSNorm}
SOFTMAXES = ("full", "adaptive")


@dataclass
class TransformerLMConfig:
    """The shape and regularization of a :class:`lmtut.TransformerLM`; checked at
    construction."""

    # the tokenizer's; None until it is known (a recipe names no vocabulary)
    vocab_size: int | None = None
    d_model: int = 384  # width of the embeddings and hidden states
    num_layers: int = 12  # Transformer blocks
    # attention heads per block (d_model must divide among them)
    num_attn_heads: int = 6
    d_inner: int = 1536  # width of the feed-forward network's hidden layer
    max_sequence_length: int = 256  # tokens a window reads (NeMo's max_seq_length)
    # on each sublayer's output (NeMo's attn_layer_dropout); attn_dropout's and
    # emb_dropout's default
    dropout: float = 0.2
    # on the attention weights (NeMo's attn_score_dropout)
    attn_dropout: float | None = None
    # on the embeddings plus positions (NeMo's embedding_dropout)
    emb_dropout: float | None = None
    ffn_dropout: float = 0.0  # inside the feed-forward network, after its activation
    # drop whole word types from the embedding, the same words at every position of a
    # batch
    word_dropout: float = 0.0
    output_dropout: float = 0.0  # on the final hidden states, before the softmax layer
    # embedding, residual and output dropout: one mask per sequence, shared across time
    locked_dropout: bool = False
    # the softmax layer's weight is the embedding matrix (Press & Wolf, 2017)
    tie_weights: bool = True
    # LayerNorm before each sublayer (False: after the residual add, as in Vaswani et
    # al.)
    pre_norm: bool = True
    # or "learned", or "rope" (rotary, Su et al., 2021: queries and keys turned)
    positions: str = "sinusoidal"
    # or "gelu", or "swiglu" (a gated feed-forward, Shazeer, 2020, at equal parameters)
    activation: str = "relu"
    # "layer" (LayerNorm) or "rms" (RMSNorm, Zhang & Sennrich, 2019)
    norm: str = "layer"
    # biases in the blocks' linear layers and norms, the final norm and a full softmax
    # layer
    bias: bool = True
    # RMS-normalize each head's queries and keys before their dot products
    qk_norm: bool = False
    classifier_layers: int = 1  # hidden layers of the token classifier, plus one
    # the softmax layer's rows are the vocabulary rounded up to a multiple of this
    vocab_multiple: int = 8
    # "full", or "adaptive" (Grave et al., 2017: frequent words first; needs
    # --no-tie_weights)
    softmax: str = "full"
    # where the adaptive softmax's head and tail clusters end
    adaptive_cutoffs: tuple[int, ...] = (2000, 10000)
    # each tail cluster's projection is this many times narrower than the last
    adaptive_div_value: float = 4.0

    def __post_init__(self) -> None:
        if self.attn_dropout is None:
            self.attn_dropout = self.dropout
        if self.emb_dropout is None:
            self.emb_dropout = self.dropout
        # a JSON list comes back as a tuple
        self.adaptive_cutoffs = tuple(int(c) for c in self.adaptive_cutoffs)
        self._check_shape()
        self._check_choices()
        self._check_adaptive_softmax()

    def _check_shape(self) -> None:
        positive = [
            "d_model",
            "num_layers",
            "num_attn_heads",
            "d_inner",
            "max_sequence_length",
            "classifier_layers",
            "vocab_multiple",
        ] + (["vocab_size"] if self.vocab_size is not None else [])
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be a positive integer, got {getattr(self, name)}"
                )
        if self.d_model % self.num_attn_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by "
                f"num_attn_heads ({self.num_attn_heads})"
            )
        if self.positions == "rope" and self.d_head % 2:
            raise ValueError(
                f"rotary positions turn pairs of features: d_model / "
                f"num_attn_heads ({self.d_head}) must "
                "be even"
            )
        for name in (
            "dropout",
            "attn_dropout",
            "emb_dropout",
            "ffn_dropout",
            "word_dropout",
            "output_dropout",
        ):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"{name} must lie in [0, 1), got {getattr(self, name)}"
                )

    def _check_choices(self) -> None:
        for name, choices in (
            ("positions", POSITIONS),
            ("softmax", SOFTMAXES),
            ("activation", ACTIVATIONS),
            ("norm", NORMS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {', '.join(choices)}, got "
                    f"{getattr(self, name)!r}"
                )

    def _check_adaptive_softmax(self) -> None:
        if self.softmax == "adaptive" and self.tie_weights:
            raise ValueError(
                "the adaptive softmax has output layers of its own, which "
                "cannot be the embedding "
                "matrix: set tie_weights=False (--no-tie_weights)"
            )
        cutoffs = self.adaptive_cutoffs
        if list(cutoffs) != sorted(set(cutoffs)) or not cutoffs or cutoffs[0] < 1:
            raise ValueError(
                f"adaptive_cutoffs must be increasing positive integers, got {cutoffs}"
            )
        if (
            self.softmax == "adaptive"
            and self.vocab_size is not None
            and cutoffs[-1] >= self.vocab_size
        ):
            raise ValueError(
                f"adaptive_cutoffs {cutoffs} must lie below the "
                f"vocabulary size {self.vocab_size}"
            )
        if self.adaptive_div_value < 1:
            raise ValueError(
                f"adaptive_div_value must be at least 1, got {self.adaptive_div_value}"
            )

    @property
    def padded_vocab_size(self) -> int:
        """The rows of the embedding and softmax layers: ``vocab_size`` rounded up to
        ``vocab_multiple``."""
        if self.vocab_size is None:
            raise ValueError(
                "vocab_size is not set: build the model with "
                "config.with_vocab(tokenizer.vocab_size)"
            )
        return round_up(self.vocab_size, self.vocab_multiple)

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_attn_heads

    @property
    def ffn_hidden(self) -> int:
        """The feed-forward's hidden width: ``d_inner``, or for SwiGLU's three matrices
        2/3 of it, rounded up to a multiple of 8 (Shazeer, 2020: the same parameters as
        the two matrices of ReLU's)."""
        return (
            round_up(2 * self.d_inner // 3, 8)
            if self.activation == "swiglu"
            else self.d_inner
        )

    def norm_layer(self, width: int | None = None) -> nn.Module:
        """The configured norm over ``width`` features (default ``d_model``), with a
        bias only where it has one."""
        width = width or self.d_model
        if self.norm == "rms":
            return nn.RMSNorm(width)
        return nn.LayerNorm(width, bias=self.bias)

    def with_vocab(self, vocab_size: int) -> "TransformerLMConfig":
        """A copy with the tokenizer's vocabulary size filled in."""
        return replace(self, vocab_size=vocab_size)


# --------------------------------------------------------------------------------------
# Rotary position embeddings (Su et al., 2021, *RoFormer: Enhanced Transformer with
# Rotary Position Embedding*).
#
# Instead of adding a position vector to the embeddings, rotary positions rotate each
# query and key: the head's ``d_head`` features are taken as ``d_head / 2`` pairs, and
# pair i at position p is turned by the angle ``p * theta_i``, with ``theta_i =
# base^(-2i / d_head)``. A dot product of a query at m with a key at n then depends on
# the positions only through ``m - n``: attention sees relative positions, and nothing
# is learned.


def rotary_angles(
    positions: torch.Tensor, d_head: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of the angles ``p * theta_i`` for each position p of ``positions``
    (T,): two (T, d_head / 2)."""
    if d_head % 2:
        raise ValueError(f"rotary positions need an even head width, got {d_head}")
    theta = base ** (
        -torch.arange(0, d_head, 2, dtype=torch.float32, device=positions.device)
        / d_head
    )
    angles = positions.float()[:, None] * theta[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the feature pairs (0, 1), (2, 3), ... of ``x`` (..., T, d_head) by the
    angles of ``cos``/``sin`` (T, d_head / 2): (a, b) -> (a cos - b sin, a sin + b cos),
    in ``x``'s dtype."""
    a, b = x[..., 0::2].float(), x[..., 1::2].float()
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


# --------------------------------------------------------------------------------------
# Chapter 3: causal multi-head self-attention (Vaswani et al., 2017, section 3.2).
#
# ``attention_reference`` is the plain-math version the chapter derives, softmax(Q K^T /
# sqrt(d_head) + mask) V; ``CausalSelfAttention`` runs the same computation through
# ``F.scaled_dot_product_attention``, which picks a fused kernel (FlashAttention,
# memory-efficient attention) on GPUs. The tests check that both give the same numbers,
# and that they match ``torch.nn.MultiheadAttention``. The maps that chapter 3 draws
# come from the model itself: :func:`attention_maps` hooks every attention module and
# recomputes its weights with the reference math from the very queries and keys it used.
# Given a :class:`KVCache` (generation, chapter 7), the module reads the cached keys and
# values of the tokens before and adds the new tokens' own: the same ``forward``, with
# the positions continuing where the cache ends.


def causal_mask(
    length: int, device: torch.device | str | None = None, past: int = 0
) -> torch.Tensor:
    """(length, past + length) boolean mask, True where query i (at position past + i)
    may attend to key j, that is j <= past + i: every one of ``past`` earlier keys and
    the new ones up to itself."""
    return torch.ones(length, past + length, dtype=torch.bool, device=device).tril(
        diagonal=past
    )


def attention_mask(
    input_mask: torch.Tensor | None, length: int, device: torch.device
) -> torch.Tensor | None:
    """The causal mask combined with a key padding mask, shaped (batch, 1, T, T) for
    broadcasting over heads.

    ``input_mask`` is (batch, T) and True at real tokens. A query may always attend to
    itself, so that no row is fully masked (that would give NaN); the outputs at padding
    positions are ignored anyway. Returns None when there is no padding mask: the
    attention then uses ``is_causal=True``, with which PyTorch may pick a fused kernel.
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

    q, k, v: (..., T, d_head); mask: boolean, broadcastable to (..., T, T), True where
    attending is allowed (None: causal).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., T, T)
    if mask is None:
        mask = causal_mask(q.size(-2), q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


@dataclass
class KVCache:
    """One layer's keys and values of the tokens read so far, (B, heads, T_past, d_head)
    each (None: none yet)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(-2)

    def append(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' keys and values; return all of them."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask: one fused Q/K/V projection, heads,
    output projection.

    With ``positions="rope"`` the queries and keys are turned by their positions
    (``lmtut.model``); with ``qk_norm`` each head's queries and keys are RMS-normalized
    first (with a learned scale each).
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

    def normalize_and_rotate(
        self, q: torch.Tensor, k: torch.Tensor, offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k after the optional QK-norm and rotary positions, the first token at
        position ``offset``."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:
            positions = torch.arange(offset, offset + q.size(-2), device=q.device)
            cos, sin = rotary_angles(positions, self.d_head)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k

    def split_heads(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, d_model) -> q, k, v, each (B, heads, T, d_head)."""
        B, T, _ = x.shape
        q, k, v = (
            self.qkv(x)
            .view(B, T, 3, self.num_attn_heads, self.d_head)
            .permute(2, 0, 3, 1, 4)
        )
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, d_head) -> (B, T, d_model) through the output projection."""
        B, _, T, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, d_model); mask: from :func:`attention_mask` (None: causal only).
        With a ``cache``, x holds the new tokens only: they attend to the cached ones
        and, causally, to themselves, and join the cache."""
        q, k, v = self.split_heads(x)
        past = 0 if cache is None else cache.length
        q, k = self.normalize_and_rotate(q, k, offset=past)
        if cache is not None:
            k, v = cache.append(k, v)
        dropout = self.attn_dropout if self.training else 0.0
        if mask is None and past == 0:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=True
            )
        # a padding mask, or new queries that see every cached key and the new keys up
        # to themselves
        else:
            allowed = (
                mask
                if mask is not None
                else causal_mask(q.size(-2), x.device, past=past)
            )
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout
            )
        return self.merge_heads(y)

    def weights(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (B, heads, T, T) attention weights that ``forward(x, mask)`` applies, by
        the reference math (no attention dropout: for looking at, not for training)."""
        q, k, v = self.split_heads(x)
        q, k = self.normalize_and_rotate(q, k)
        return attention_reference(q, k, v, mask)[1]


@contextmanager
def attention_maps(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of ``model`` appends each attention layer's (B,
    heads, T, T) weights to the list it yields, layer after layer (chapter 3's maps),
    from forward hooks: the model's code is untouched."""
    maps: list[torch.Tensor] = []

    def record(
        module: CausalSelfAttention, args: tuple, kwargs: dict, output: torch.Tensor
    ) -> None:
        if kwargs.get("cache") is not None:
            raise ValueError(
                "attention_maps draws whole windows: call the model without a KV cache"
            )
        with torch.no_grad():
            maps.append(module.weights(*args, mask=kwargs.get("mask")))

    attentions = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    hooks = [m.register_forward_hook(record, with_kwargs=True) for m in attentions]
    try:
        yield maps
    finally:
        for hook in hooks:
            hook.remove()


# --------------------------------------------------------------------------------------
# Chapter 8: dropout for small data, as AWD-LSTM (Merity et al., 2018) regularized its
# LSTM.
#
# ``WordDropout`` is the embedding dropout of Gal & Ghahramani (2016) (AWD-LSTM's
# ``dropoute``): it drops whole word *types*, so that a dropped word vanishes from every
# position of the batch where it occurs, and the model cannot lean on any one word's
# vector. ``LockedDropout`` is their variational dropout (AWD-LSTM's ``LockedDropout``):
# one mask per sequence, shared by all its time steps, instead of a fresh mask per
# position (Srivastava et al., 2014). Both rescale what they keep by ``1 / (1 - p)``, as
# ``nn.Dropout`` does, and both are the identity in ``eval()`` mode. Neither draws a
# random number when it is the identity, so an option left off changes no run.


class WordDropout(nn.Module):
    """Drop word types from the embedding: ``(B, T, d)`` embeddings of ``(B, T)`` ids ->
    the same shape.

    One keep-or-drop draw per row of the embedding matrix (a vocabulary of
    ``num_embeddings`` words) for each call, that is for each batch: a dropped word's
    vector is zero at every one of its positions, a kept one is scaled by ``1 / (1 -
    p)``. Multiplying the looked-up vectors by the rows' mask equals looking them up in
    the masked matrix (AWD-LSTM's ``embedded_dropout``), without building that matrix.
    """

    def __init__(self, num_embeddings: int, p: float = 0.0):
        super().__init__()
        self.num_embeddings, self.p = num_embeddings, p

    def row_mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(num_embeddings,) scales: 0 for a dropped word, 1 / (1 - p) for a kept
        one."""
        keep = torch.empty(self.num_embeddings, device=device, dtype=dtype).bernoulli_(
            1 - self.p
        )
        return keep / (1 - self.p)

    def forward(self, embedded: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return embedded
        return embedded * self.row_mask(embedded.device, embedded.dtype)[
            input_ids
        ].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared across time: ``(B, T, d)`` -> the same
    shape.

    The mask is ``(B, 1, d)``: position ``t`` of sequence ``b`` loses the same features
    as every other position of ``b``: a locked mask removes a feature for the whole
    sequence (Gal & Ghahramani, 2016), where a fresh mask per position (``nn.Dropout``)
    removes it at some positions only (one hypothesis: the next layers can then average
    the noise away over the window).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty(
            x.size(0), 1, x.size(2), device=x.device, dtype=x.dtype
        ).bernoulli_(1 - self.p)
        return x * mask / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def sequence_dropout(p: float, locked: bool) -> nn.Module:
    """The dropout of a ``(B, T, d)`` stream of states: ``LockedDropout`` when
    ``locked``, else ``nn.Dropout``."""
    return LockedDropout(p) if locked else nn.Dropout(p)


# --------------------------------------------------------------------------------------
# Chapter 3: the causal Transformer encoder (NeMo's ``TransformerEncoderNM``; Vaswani et
# al., 2017).
#
# Token embedding scaled by sqrt(d_model), positions added (sinusoidal or learned),
# dropout, then ``num_layers`` blocks of causal self-attention and a position-wise
# feed-forward network, each wrapped in a residual connection with layer normalization.
# Pre-norm (norm, sublayer, add; a final norm after the last block) is the default: it
# trains stably without a long warmup. Post-norm (add, then norm) is the original
# paper's arrangement.
#
# Chapter 8 adds the regularization of ``lmtut.model``: word dropout on the embedding
# lookup, dropout on the final states (``output_dropout``), and with ``locked_dropout``
# one mask per sequence for the embedding, residual and output dropouts.


def sinusoidal_positions(max_length: int, d_model: int) -> torch.Tensor:
    """(max_length, d_model) table: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] =
    cos(same)."""
    position = torch.arange(max_length, dtype=torch.float32)[:, None]
    frequency = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32)
        * (-math.log(10000.0) / d_model)
    )
    table = torch.zeros(max_length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table


class FeedForward(nn.Sequential):
    """Position-wise feed-forward network: Linear(d_model, d_inner), activation,
    dropout, Linear(d_inner, d_model)."""

    def __init__(self, config: TransformerLMConfig):
        bias = config.bias
        super().__init__(
            nn.Linear(config.d_model, config.d_inner, bias=bias),
            ACTIVATIONS[config.activation](),
            nn.Dropout(config.ffn_dropout),
            nn.Linear(config.d_inner, config.d_model, bias=bias),
        )


class SwiGLU(nn.Module):
    """The gated feed-forward of Shazeer (2020): ``down(dropout(silu(gate(x)) *
    up(x)))``, its hidden width ``config.ffn_hidden`` (2/3 of ``d_inner``: three
    matrices with the parameters of two)."""

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
    """Self-attention and feed-forward sublayers, each with dropout, a residual
    connection and a layer norm."""

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.norm1, self.norm2 = config.norm_layer(), config.norm_layer()
        self.attn = CausalSelfAttention(config)
        self.ffn = (
            SwiGLU(config) if config.activation == "swiglu" else FeedForward(config)
        )
        # on each sublayer's output, before the add
        self.drop = sequence_dropout(config.dropout, config.locked_dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """(B, T, d_model) -> the same shape; with a ``cache``, the new tokens only (see
        the attention)."""
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), mask=mask, cache=cache))
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, mask=mask, cache=cache)))
        return self.norm2(x + self.drop(self.ffn(x)))


class TransformerEncoder(nn.Module):
    """Embeddings, positions and a stack of causal Transformer blocks: (B, T) ids -> (B,
    T, d_model) states."""

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        self.d_model, self.max_sequence_length = (
            config.d_model,
            config.max_sequence_length,
        )
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        # rotary positions (positions="rope") live in the attention
        self.position_embedding = None
        if config.positions == "sinusoidal":
            table = sinusoidal_positions(config.max_sequence_length, config.d_model)
            self.register_buffer("position_table", table, persistent=False)
        elif config.positions == "learned":
            self.position_embedding = nn.Embedding(
                config.max_sequence_length, config.d_model
            )
        self.additive_positions = config.positions != "rope"
        self.word_drop = WordDropout(config.padded_vocab_size, config.word_dropout)
        self.emb_drop = sequence_dropout(config.emb_dropout, config.locked_dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(config) for _ in range(config.num_layers)
        )
        self.final_norm = config.norm_layer() if config.pre_norm else nn.Identity()
        # before the softmax layer
        self.output_drop = sequence_dropout(
            config.output_dropout, config.locked_dropout
        )

    def positions(self, length: int, offset: int = 0) -> torch.Tensor | float:
        """What is added to the embeddings of positions ``offset`` to ``offset +
        length`` (0 with rotary positions)."""
        if not self.additive_positions:
            return 0.0
        if self.position_embedding is not None:
            return self.position_embedding.weight[offset : offset + length]
        return self.position_table[offset : offset + length]

    def forward(
        self,
        input_ids: torch.Tensor,
        input_mask: torch.Tensor | None = None,
        kv_cache: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """input_ids: (B, T) int64; input_mask: (B, T), True at real tokens (None: no
        padding). With a ``kv_cache`` (one :class:`KVCache` per layer), the ids are the
        tokens that follow the cached ones (eval mode, no padding), and their positions
        continue where the cache ends."""
        past = 0 if kv_cache is None else kv_cache[0].length
        T = input_ids.size(1)
        if past + T > self.max_sequence_length:
            raise ValueError(
                f"{past + T} tokens are more than "
                f"max_sequence_length={self.max_sequence_length}: "
                "read the last window only (with a KV cache: start a new "
                "cache on it)"
            )
        x = self.word_drop(self.embedding(input_ids), input_ids) * math.sqrt(
            self.d_model
        )
        x = self.emb_drop(x + self.positions(T, offset=past))
        mask = attention_mask(input_mask, T, input_ids.device)
        caches = kv_cache if kv_cache is not None else [None] * len(self.layers)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, mask=mask, cache=cache)
        return self.output_drop(self.final_norm(x))


# --------------------------------------------------------------------------------------
# Chapter 4: the token classifier, weight tying (Press & Wolf, 2017), the adaptive
# softmax (Grave et al., 2017) and the whole language model.
#
# ``TokenClassifier`` is NeMo's classifier head: an optional hidden MLP, then a
# projection to the (padded) vocabulary, returning log-probabilities.
# ``AdaptiveClassifier`` is the cheaper alternative: a full softmax over the frequent
# words only, and the rare words in clusters behind narrower projections (PyTorch's
# ``nn.AdaptiveLogSoftmaxWithLoss``). ``TransformerLM`` puts the encoder of Chapter 3
# and a classifier together; with ``tie_weights=True`` the classifier's last layer *is*
# the embedding matrix (one tensor, not a copy), as in the NeMo tutorial.
#
# Every classifier gives the whole distribution (``classifier(hidden)``: (B, T, V)
# log-probabilities, for sampling and smoothed losses) or only the log-probability of
# each target (``classifier.target_log_probs(hidden, targets)``: (B, T), all that the
# plain loss and perplexity need, and far cheaper for the adaptive softmax). Callers
# never reach them: ``TransformerLM.forward`` returns an :class:`LMOutput` with what was
# asked for, at the positions asked for.


def gather_targets(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each target's log-probability, shaped like ``targets``, from the whole
    distribution ``log_probs`` (targets' shape, V)."""
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


#: One softmax behind the targets of some positions: (their rows, (n, C) logits, the
#: target's column (n,)).
LogitGroup = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TokenClassifier(nn.Module):
    """(B, T, hidden) -> (B, T, num_classes) log-probabilities (``log_softmax=False``:
    logits).

    ``num_layers - 1`` hidden layers (Linear, activation, LayerNorm) come before the
    last projection, whose weight is ``self.weight``: the tensor that weight tying
    replaces by the embedding matrix.
    """

    def __init__(
        self,
        hidden_size: int,
        num_classes: int,
        num_layers: int = 1,
        activation: str = "relu",
        log_softmax: bool = True,
        bias: bool = True,
    ):
        super().__init__()
        hidden = []
        for _ in range(num_layers - 1):
            hidden += [
                nn.Linear(hidden_size, hidden_size),
                ACTIVATIONS[activation](),
                nn.LayerNorm(hidden_size),
            ]
        self.mlp = nn.Sequential(*hidden)
        self.last = nn.Linear(hidden_size, num_classes, bias=bias)
        self.log_softmax = log_softmax

    @property
    def weight(self) -> nn.Parameter:
        return self.last.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.last(self.mlp(hidden_states))
        # fp32 under autocast too
        return F.log_softmax(logits.float(), dim=-1) if self.log_softmax else logits

    def target_log_probs(
        self, hidden_states: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) log-probability of each target: the full log-softmax, then one value
        per position."""
        return gather_targets(self(hidden_states), targets)

    def logit_groups(
        self, hidden: torch.Tensor, targets: torch.Tensor
    ) -> list[LogitGroup]:
        """One softmax over every word: its log-probabilities are logits shifted by a
        constant per row."""
        return [
            (
                torch.arange(len(targets), device=targets.device),
                self(hidden).float(),
                targets,
            )
        ]


class AdaptiveClassifier(nn.Module):
    """The adaptive softmax of Grave et al. (2017) over a vocabulary sorted by frequency
    (lmtut's is).

    The head is a full softmax over the ``cutoffs[0]`` most frequent words plus one
    entry per tail cluster; a rare word's probability is its cluster's head entry times
    its probability within the cluster, computed from a projection ``div_value`` times
    narrower per cluster. Scoring only the targets touches a cluster only for the
    positions whose target lies in it. It runs in fp32, outside autocast.
    """

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(
            config.d_model,
            config.padded_vocab_size,
            list(config.adaptive_cutoffs),
            div_value=config.adaptive_div_value,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, V) log-probabilities (every cluster computed: for
        sampling)."""
        with torch.autocast(hidden_states.device.type, enabled=False):
            flat = hidden_states.float().flatten(0, -2)
            return self.asm.log_prob(flat).view(*hidden_states.shape[:-1], -1)

    def target_log_probs(
        self, hidden_states: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) log-probability of each target, touching a tail cluster only where a
        target lies in it."""
        with torch.autocast(hidden_states.device.type, enabled=False):
            flat = hidden_states.float().flatten(0, -2)
            return self.asm(flat, targets.flatten()).output.view(targets.shape)

    def logit_groups(
        self, hidden: torch.Tensor, targets: torch.Tensor
    ) -> list[LogitGroup]:
        """The head's softmax (over the frequent words and one entry per tail cluster)
        for every target, and for the targets in a tail cluster that cluster's softmax:
        a rare word's log-probability is the sum of two."""
        asm, rows = self.asm, torch.arange(len(targets), device=targets.device)
        head_column, groups = targets.clone(), []
        for i, (low, high) in enumerate(zip(asm.cutoffs[:-1], asm.cutoffs[1:])):
            in_cluster = (targets >= low) & (targets < high)
            if in_cluster.any():
                head_column[in_cluster] = asm.shortlist_size + i
                groups.append(
                    (
                        rows[in_cluster],
                        asm.tail[i](hidden[in_cluster]),
                        targets[in_cluster] - low,
                    )
                )
        return [(rows, asm.head(hidden), head_column)] + groups


@dataclass
class LMOutput:
    """What :meth:`TransformerLM.forward` returns, each tensor under its own name
    (absent: not asked for).

    With ``at`` (a (B, T) boolean mask), the positions are the selected ones, row-major:
    (n, ...) instead of (B, T, ...).
    """

    hidden: torch.Tensor  # (B, T, d_model) the encoder's last hidden states
    # (B, T, V) every word's log-probability, float32
    log_probs: torch.Tensor | None = None
    # (B, T) each target's log-probability, float32
    target_log_probs: torch.Tensor | None = None


class TransformerLM(nn.Module):
    """Encoder + token classifier, as one ``forward(input_ids, targets, kv_cache)`` for
    training, scoring and generation (see :meth:`forward`).

    ``TransformerLM(TransformerLMConfig(vocab_size=..., d_model=..., ...))``: one
    config, handed down to the encoder, its blocks and their attention. The extra rows
    of the padded vocabulary are ordinary outputs that are never a target (the plain
    loss pushes their probability down; sampling never picks them).
    """

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError(
                "the model's config has no vocab_size: use "
                "config.with_vocab(tokenizer.vocab_size)"
            )
        self.config = config
        self.encoder = TransformerEncoder(config)
        if config.softmax == "adaptive":
            self.classifier = AdaptiveClassifier(config)
        else:
            self.classifier = TokenClassifier(
                config.d_model,
                config.padded_vocab_size,
                config.classifier_layers,
                config.activation,
                bias=config.bias,
            )
        self.apply(self._init_weights)
        if config.tie_weights:
            # one Parameter, two uses
            self.classifier.last.weight = self.encoder.embedding.weight

    def _init_weights(self, module: nn.Module) -> None:
        """Xavier-uniform linear layers with zero biases; embeddings N(0, 1/d_model), so
        that the scaled embedding (times sqrt(d_model)) has unit variance and tied
        output logits start near zero."""
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.d_model**-0.5)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: list[KVCache] | None = None,
        *,
        input_mask: torch.Tensor | None = None,
        at: torch.Tensor | None = None,
        distribution: bool = False,
    ) -> LMOutput:
        """The model on (B, T) ids: its hidden states and, from them, log-probabilities.

        - ``targets`` (B, T): each target's log-probability (``target_log_probs``), all
          a plain loss and a perplexity need (with the adaptive softmax a tail cluster
          is computed only where a target lies in it);
        - no targets, or ``distribution=True``: every word's (``log_probs``), for
          sampling and smoothed losses;
        - ``kv_cache`` (from :meth:`new_kv_cache`): the ids follow the cached tokens,
          and join them (generation);
        - ``input_mask`` (B, T): True at real tokens, for windows padded on the left;
        - ``at`` (B, T) boolean: the softmax runs at these positions only (scoring, the
          last one in generation).
        """
        hidden = self.encoder(input_ids, input_mask, kv_cache)
        if at is not None:
            hidden, targets = hidden[at], None if targets is None else targets[at]
        out = LMOutput(hidden)
        if targets is None or distribution:
            out.log_probs = self.classifier(hidden)
            if targets is not None:
                out.target_log_probs = gather_targets(out.log_probs, targets)
        else:
            out.target_log_probs = self.classifier.target_log_probs(hidden, targets)
        return out

    def new_kv_cache(self) -> list[KVCache]:
        """An empty key/value cache, one :class:`KVCache` per layer, for ``forward(...,
        kv_cache=...)``."""
        return [KVCache() for _ in self.encoder.layers]

    def logit_groups(
        self, hidden: torch.Tensor, targets: torch.Tensor
    ) -> list[LogitGroup]:
        """The softmaxes whose log-probabilities add up to each target's, as logits
        (chapter 9's calibration): ``hidden`` (N, d) from ``forward``, ``targets``
        (N,)."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.classifier.logit_groups(hidden.float(), targets)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by how an optimizer treats them, in the model's order
        (the mechanism of nanoGPT's ``configure_optimizers``; unlike nanoGPT, learned
        positions are not decayed):

        - ``"decayed"``: the matrices, embeddings and softmax layers, which weight decay
          pulls towards 0;
        - ``"not_decayed"``: biases, norms' weights and learned positions;
        - ``"block_matrices"``: the blocks' 2-D weights, which Muon updates (chapter 7);
          a subset of "decayed".
        """
        positions = (
            set(self.encoder.position_embedding.parameters())
            if self.encoder.position_embedding
            else set()
        )
        blocks = {p for p in self.encoder.layers.parameters() if p.dim() == 2}
        groups: dict[str, list[nn.Parameter]] = {
            "decayed": [],
            "not_decayed": [],
            "block_matrices": [],
        }
        for p in self.parameters():
            groups[
                "decayed" if p.dim() >= 2 and p not in positions else "not_decayed"
            ].append(p)
            if p in blocks:
                groups["block_matrices"].append(p)
        return groups

    @property
    def may_skip_parameters(self) -> bool:
        """Whether a step can leave parameters without a gradient (the adaptive
        softmax's unreached clusters)."""
        return self.config.softmax == "adaptive"

    @property
    def tied(self) -> bool:
        return getattr(self.classifier, "weight", None) is self.encoder.embedding.weight

    def with_window(self, length: int) -> "TransformerLM":
        """A copy with the same weights that reads windows of up to ``length`` tokens
        (chapter 7's length test). Sinusoidal positions are a formula and rotary ones
        are computed at every forward, so both extend to any length; learned positions
        have no vector past their table's last row and cannot."""
        if (
            self.config.positions == "learned"
            and length > self.config.max_sequence_length
        ):
            raise ValueError(
                f"learned positions have vectors for "
                f"{self.config.max_sequence_length} positions only: "
                f"train with max_sequence_length={length} to read windows "
                f"of {length}"
            )
        longer = TransformerLM(replace(self.config, max_sequence_length=length))
        # the sinusoidal table is not part of the state: it is rebuilt
        longer.load_state_dict(self.state_dict())
        return longer.to(next(self.parameters()).device).train(self.training)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters: as built (a tied tensor counted once), and what the
        untied model would have."""
        # .parameters() yields a shared tensor once
        total = sum(p.numel() for p in self.parameters())
        embedding = self.encoder.embedding.weight.numel()
        return {
            "total": total,
            "embedding": embedding,
            "untied_total": total + embedding if self.tied else total,
        }
