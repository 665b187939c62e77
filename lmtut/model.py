"""Chapter 4: the token classifier, weight tying (Press & Wolf, 2017) and the whole language model.

``TokenClassifier`` is NeMo's classifier head: an optional hidden MLP, then a projection to the (padded)
vocabulary, returning log-probabilities. ``TransformerLM`` puts the encoder of Chapter 3 and the classifier
together; with ``tie_weights=True`` the classifier's last layer *is* the embedding matrix (one tensor, not a copy),
as in the seed tutorial.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmtut.encoder import ACTIVATIONS, TransformerEncoder


class TokenClassifier(nn.Module):
    """(B, T, hidden) -> (B, T, num_classes) log-probabilities (``log_softmax=False``: logits).

    ``num_layers - 1`` hidden layers (Linear, activation, LayerNorm) come before the last projection, whose weight
    is ``self.weight``: the tensor that weight tying replaces by the embedding matrix.
    """

    def __init__(
        self,
        hidden_size: int,
        num_classes: int,
        num_layers: int = 1,
        activation: str = "relu",
        log_softmax: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden = []
        for _ in range(num_layers - 1):
            hidden += [nn.Linear(hidden_size, hidden_size), ACTIVATIONS[activation](), nn.LayerNorm(hidden_size)]
        self.mlp = nn.Sequential(*hidden)
        self.dropout = nn.Dropout(dropout)
        self.last = nn.Linear(hidden_size, num_classes)
        self.log_softmax = log_softmax

    @property
    def weight(self) -> nn.Parameter:
        return self.last.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.last(self.dropout(self.mlp(hidden_states)))
        return F.log_softmax(logits.float(), dim=-1) if self.log_softmax else logits  # fp32 under autocast too


@dataclass
class TransformerLMConfig:
    """Hyperparameters under the seed's names; checked at construction."""

    vocab_size: int
    d_model: int = 384
    num_layers: int = 12
    num_attn_heads: int = 6
    d_inner: int = 1536
    max_sequence_length: int = 256
    dropout: float = 0.2  # residual dropout; also the default of the attention and embedding dropouts
    attn_dropout: float | None = None
    emb_dropout: float | None = None
    ffn_dropout: float = 0.0
    tie_weights: bool = True
    pre_norm: bool = True
    positions: str = "sinusoidal"  # or "learned"
    activation: str = "relu"
    classifier_layers: int = 1
    padded_vocab_size: int | None = None  # default: vocab_size rounded up to a multiple of 8

    def __post_init__(self) -> None:
        if self.padded_vocab_size is None:
            self.padded_vocab_size = 8 * math.ceil(self.vocab_size / 8)
        self.attn_dropout = self.dropout if self.attn_dropout is None else self.attn_dropout
        self.emb_dropout = self.dropout if self.emb_dropout is None else self.emb_dropout
        for name in ("vocab_size", "d_model", "num_layers", "num_attn_heads", "d_inner", "max_sequence_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.num_attn_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_attn_heads ({self.num_attn_heads})")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(
                f"the model's vocabulary ({self.padded_vocab_size}) is smaller than the tokenizer's ({self.vocab_size})"
            )
        for name in ("dropout", "attn_dropout", "emb_dropout", "ffn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.positions not in ("sinusoidal", "learned"):
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {self.positions!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")


class TransformerLM(nn.Module):
    """Encoder + token classifier: ``model(input_ids, input_mask=None)`` gives (B, T, padded vocab) log-probs.

    ``TransformerLM(vocab_size, d_model, num_layers, num_attn_heads, d_inner, max_sequence_length, dropout=...,
    tie_weights=True, **more)``, or ``TransformerLM.from_config(TransformerLMConfig(...))``. The extra rows of the
    padded vocabulary are ordinary outputs that are never a target; training gives them negligible probability.
    """

    def __init__(self, vocab_size: int, d_model: int = 384, num_layers: int = 12, num_attn_heads: int = 6,
                 d_inner: int = 1536, max_sequence_length: int = 256, dropout: float = 0.2,
                 tie_weights: bool = True, **more):
        super().__init__()
        self.config = cfg = TransformerLMConfig(vocab_size, d_model, num_layers, num_attn_heads, d_inner,
                                                max_sequence_length, dropout, tie_weights=tie_weights, **more)
        self.encoder = TransformerEncoder(
            cfg.padded_vocab_size, d_model, num_layers, num_attn_heads, d_inner, max_sequence_length,
            dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, emb_dropout=cfg.emb_dropout,
            ffn_dropout=cfg.ffn_dropout, pre_norm=cfg.pre_norm, positions=cfg.positions, activation=cfg.activation,
        )
        self.classifier = TokenClassifier(d_model, cfg.padded_vocab_size, cfg.classifier_layers, cfg.activation)
        self.apply(self._init_weights)
        if tie_weights:
            self.classifier.last.weight = self.encoder.embedding.weight  # one Parameter, two uses

    @classmethod
    def from_config(cls, config: TransformerLMConfig) -> "TransformerLM":
        return cls(**asdict(config))

    def _init_weights(self, module: nn.Module) -> None:
        """Xavier-uniform linear layers with zero biases; embeddings N(0, 1/d_model), so that the scaled embedding
        (times sqrt(d_model)) has unit variance and tied output logits start near zero."""
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.d_model**-0.5)

    @property
    def tied(self) -> bool:
        return self.classifier.last.weight is self.encoder.embedding.weight

    def forward(self, input_ids: torch.Tensor, input_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.encoder(input_ids, input_mask))

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters: as built (a tied tensor counted once), and what the untied model would have."""
        total = sum(p.numel() for p in self.parameters())  # .parameters() yields a shared tensor once
        embedding = self.encoder.embedding.weight.numel()
        return {"total": total, "embedding": embedding, "untied_total": total + embedding if self.tied else total}
