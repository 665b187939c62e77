"""Chapters 3, 4, 7 and 8: the model's hyperparameters, in one dataclass that owns its defaults and checks.

Every module of the model receives this one object (``TransformerLM(config)``, ``TransformerEncoder(config)``,
``TransformerBlock(config)``, ``CausalSelfAttention(config)``), as in nanoGPT: a hyperparameter is named once and
read where it is used. The defaults are the NeMo tutorial's model (NeMo 0.x's ``transformer_lm.py``: 12 layers,
d_model 384); the presets of ``lmtut.recipes`` override them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from lmtut.tokenizer import round_up

#: by name: the feed-forward's and the classifier's; "swiglu" gates the feed-forward with SiLU (Shazeer, 2020)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swiglu": nn.SiLU}
POSITIONS = ("sinusoidal", "learned", "rope")
NORMS = {"layer": nn.LayerNorm, "rms": nn.RMSNorm}
SOFTMAXES = ("full", "adaptive")


@dataclass
class TransformerLMConfig:
    """The shape and regularization of a :class:`lmtut.TransformerLM`; checked at construction."""

    vocab_size: int | None = None  # the tokenizer's; None until it is known (a recipe names no vocabulary)
    d_model: int = 384  # width of the embeddings and hidden states
    num_layers: int = 12  # Transformer blocks
    num_attn_heads: int = 6  # attention heads per block (d_model must divide among them)
    d_inner: int = 1536  # width of the feed-forward network's hidden layer
    max_sequence_length: int = 256  # tokens a window reads (NeMo's max_seq_length)
    dropout: float = 0.2  # on each sublayer's output (NeMo's attn_layer_dropout); default of the next two
    attn_dropout: float | None = None  # on the attention weights (NeMo's attn_score_dropout)
    emb_dropout: float | None = None  # on the embeddings plus positions (NeMo's embedding_dropout)
    ffn_dropout: float = 0.0  # inside the feed-forward network, after its activation
    word_dropout: float = 0.0  # drop whole word types from the embedding, the same words at every position of a batch
    output_dropout: float = 0.0  # on the final hidden states, before the softmax layer
    locked_dropout: bool = False  # embedding, residual and output dropout: one mask per sequence, shared across time
    tie_weights: bool = True  # the softmax layer's weight is the embedding matrix (Press & Wolf, 2017)
    pre_norm: bool = True  # LayerNorm before each sublayer (False: after the residual add, as in Vaswani et al.)
    positions: str = "sinusoidal"  # or "learned", or "rope" (rotary, Su et al., 2021: queries and keys turned)
    activation: str = "relu"  # or "gelu", or "swiglu" (a gated feed-forward, Shazeer, 2020, at equal parameters)
    norm: str = "layer"  # "layer" (LayerNorm) or "rms" (RMSNorm, Zhang & Sennrich, 2019)
    bias: bool = True  # biases in the blocks' linear layers and norms, the final norm and a full softmax layer
    qk_norm: bool = False  # RMS-normalize each head's queries and keys before their dot products
    classifier_layers: int = 1  # hidden layers of the token classifier, plus one
    vocab_multiple: int = 8  # the softmax layer's rows are the vocabulary rounded up to a multiple of this
    softmax: str = "full"  # "full", or "adaptive" (Grave et al., 2017: frequent words first; needs --no-tie_weights)
    adaptive_cutoffs: tuple[int, ...] = (2000, 10000)  # where the adaptive softmax's head and tail clusters end
    adaptive_div_value: float = 4.0  # each tail cluster's projection is this many times narrower than the last

    def __post_init__(self) -> None:
        if self.attn_dropout is None:
            self.attn_dropout = self.dropout
        if self.emb_dropout is None:
            self.emb_dropout = self.dropout
        self.adaptive_cutoffs = tuple(int(c) for c in self.adaptive_cutoffs)  # a JSON list comes back as a tuple
        self._check_shape()
        self._check_choices()
        self._check_adaptive_softmax()

    def _check_shape(self) -> None:
        positive = ["d_model", "num_layers", "num_attn_heads", "d_inner", "max_sequence_length",
                    "classifier_layers", "vocab_multiple"] + (["vocab_size"] if self.vocab_size is not None else [])
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.num_attn_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_attn_heads ({self.num_attn_heads})")
        if self.positions == "rope" and self.d_head % 2:
            raise ValueError(f"rotary positions turn pairs of features: d_model / num_attn_heads ({self.d_head}) must "
                             "be even")
        for name in ("dropout", "attn_dropout", "emb_dropout", "ffn_dropout", "word_dropout", "output_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")

    def _check_choices(self) -> None:
        for name, choices in (("positions", POSITIONS), ("softmax", SOFTMAXES), ("activation", ACTIVATIONS),
                              ("norm", NORMS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def _check_adaptive_softmax(self) -> None:
        if self.softmax == "adaptive" and self.tie_weights:
            raise ValueError("the adaptive softmax has output layers of its own, which cannot be the embedding "
                             "matrix: set tie_weights=False (--no-tie_weights)")
        cutoffs = self.adaptive_cutoffs
        if list(cutoffs) != sorted(set(cutoffs)) or not cutoffs or cutoffs[0] < 1:
            raise ValueError(f"adaptive_cutoffs must be increasing positive integers, got {cutoffs}")
        if self.softmax == "adaptive" and self.vocab_size is not None and cutoffs[-1] >= self.vocab_size:
            raise ValueError(f"adaptive_cutoffs {cutoffs} must lie below the vocabulary size {self.vocab_size}")
        if self.adaptive_div_value < 1:
            raise ValueError(f"adaptive_div_value must be at least 1, got {self.adaptive_div_value}")

    @property
    def padded_vocab_size(self) -> int:
        """The rows of the embedding and softmax layers: ``vocab_size`` rounded up to ``vocab_multiple``."""
        if self.vocab_size is None:
            raise ValueError("vocab_size is not set: build the model with config.with_vocab(tokenizer.vocab_size)")
        return round_up(self.vocab_size, self.vocab_multiple)

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_attn_heads

    @property
    def ffn_hidden(self) -> int:
        """The feed-forward's hidden width: ``d_inner``, or for SwiGLU's three matrices 2/3 of it, rounded up to a
        multiple of 8 (Shazeer, 2020: the same parameters as the two matrices of ReLU's)."""
        return round_up(2 * self.d_inner // 3, 8) if self.activation == "swiglu" else self.d_inner

    def norm_layer(self, width: int | None = None) -> nn.Module:
        """The configured norm over ``width`` features (default ``d_model``), with a bias only where it has one."""
        width = width or self.d_model
        if self.norm == "rms":
            return nn.RMSNorm(width)
        return nn.LayerNorm(width, bias=self.bias)

    def with_vocab(self, vocab_size: int) -> "TransformerLMConfig":
        """A copy with the tokenizer's vocabulary size filled in."""
        return replace(self, vocab_size=vocab_size)
