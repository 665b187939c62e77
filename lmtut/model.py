"""Chapter 4: the token classifier, weight tying (Press & Wolf, 2017), the adaptive softmax (Grave et al., 2017)
and the whole language model.

``TokenClassifier`` is NeMo's classifier head: an optional hidden MLP, then a projection to the (padded)
vocabulary, returning log-probabilities. ``AdaptiveClassifier`` is the cheaper alternative: a full softmax over the
frequent words only, and the rare words in clusters behind narrower projections (PyTorch's
``nn.AdaptiveLogSoftmaxWithLoss``). ``TransformerLM`` puts the encoder of Chapter 3 and a classifier together; with
``tie_weights=True`` the classifier's last layer *is* the embedding matrix (one tensor, not a copy), as in the NeMo
tutorial.

Every classifier gives the whole distribution (``classifier(hidden)``: (B, T, V) log-probabilities, for sampling
and smoothed losses) or only the log-probability of each target (``classifier.target_log_probs(hidden, targets)``:
(B, T), all that the plain loss and perplexity need, and far cheaper for the adaptive softmax).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from lmtut.encoder import TransformerEncoder
from lmtut.model_config import ACTIVATIONS, TransformerLMConfig


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
        bias: bool = True,
    ):
        super().__init__()
        hidden = []
        for _ in range(num_layers - 1):
            hidden += [nn.Linear(hidden_size, hidden_size), ACTIVATIONS[activation](), nn.LayerNorm(hidden_size)]
        self.mlp = nn.Sequential(*hidden)
        self.dropout = nn.Dropout(dropout)
        self.last = nn.Linear(hidden_size, num_classes, bias=bias)
        self.log_softmax = log_softmax

    @property
    def weight(self) -> nn.Parameter:
        return self.last.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.last(self.dropout(self.mlp(hidden_states)))
        return F.log_softmax(logits.float(), dim=-1) if self.log_softmax else logits  # fp32 under autocast too

    def target_log_probs(self, hidden_states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probability of each target: the full log-softmax, then one value per position."""
        return self(hidden_states).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class AdaptiveClassifier(nn.Module):
    """The adaptive softmax of Grave et al. (2017) over a vocabulary sorted by frequency (lmtut's is).

    The head is a full softmax over the ``cutoffs[0]`` most frequent words plus one entry per tail cluster; a rare
    word's probability is its cluster's head entry times its probability within the cluster, computed from a
    projection ``div_value`` times narrower per cluster. Scoring only the targets touches a cluster only for the
    positions whose target lies in it. It runs in fp32, outside autocast.
    """

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(config.d_model, config.padded_vocab_size,
                                                 list(config.adaptive_cutoffs), div_value=config.adaptive_div_value)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, V) log-probabilities (every cluster computed: for sampling)."""
        with torch.autocast(hidden_states.device.type, enabled=False):
            flat = hidden_states.float().flatten(0, -2)
            return self.asm.log_prob(flat).view(*hidden_states.shape[:-1], -1)

    def target_log_probs(self, hidden_states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probability of each target, touching a tail cluster only where a target lies in it."""
        with torch.autocast(hidden_states.device.type, enabled=False):
            flat = hidden_states.float().flatten(0, -2)
            return self.asm(flat, targets.flatten()).output.view(targets.shape)


class TransformerLM(nn.Module):
    """Encoder + token classifier: ``model(input_ids, input_mask=None)`` gives (B, T, padded vocab) log-probs.

    ``TransformerLM(TransformerLMConfig(vocab_size=..., d_model=..., ...))``: one config, handed down to the encoder,
    its blocks and their attention. The extra rows of the padded vocabulary are ordinary outputs that are never a
    target; training gives them negligible probability.
    """

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("the model's config has no vocab_size: use config.with_vocab(tokenizer.vocab_size)")
        self.config = config
        self.encoder = TransformerEncoder(config)
        if config.softmax == "adaptive":
            self.classifier = AdaptiveClassifier(config)
        else:
            self.classifier = TokenClassifier(config.d_model, config.padded_vocab_size, config.classifier_layers,
                                              config.activation, bias=config.bias)
        self.apply(self._init_weights)
        if config.tie_weights:
            self.classifier.last.weight = self.encoder.embedding.weight  # one Parameter, two uses

    def _init_weights(self, module: nn.Module) -> None:
        """Xavier-uniform linear layers with zero biases; embeddings N(0, 1/d_model), so that the scaled embedding
        (times sqrt(d_model)) has unit variance and tied output logits start near zero."""
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.d_model**-0.5)

    @property
    def may_skip_parameters(self) -> bool:
        """Whether a step can leave parameters without a gradient (the adaptive softmax's unreached clusters)."""
        return self.config.softmax == "adaptive"

    @property
    def tied(self) -> bool:
        return getattr(self.classifier, "weight", None) is self.encoder.embedding.weight

    def forward(self, input_ids: torch.Tensor, input_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, V) log-probabilities; with ``targets`` (B, T), only each target's log-probability, (B, T)."""
        hidden = self.encoder(input_ids, input_mask)
        return self.classifier(hidden) if targets is None else self.classifier.target_log_probs(hidden, targets)

    def with_window(self, length: int) -> "TransformerLM":
        """A copy with the same weights that reads windows of up to ``length`` tokens (chapter 7's length test).
        Sinusoidal positions are a formula and rotary ones are computed at every forward, so both extend to any
        length; learned positions have no vector past their table's last row and cannot."""
        if self.config.positions == "learned" and length > self.config.max_sequence_length:
            raise ValueError(f"learned positions have vectors for {self.config.max_sequence_length} positions only: "
                             f"train with max_sequence_length={length} to read windows of {length}")
        longer = TransformerLM(replace(self.config, max_sequence_length=length))
        longer.load_state_dict(self.state_dict())  # the sinusoidal table is not part of the state: it is rebuilt
        return longer.to(next(self.parameters()).device).train(self.training)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters: as built (a tied tensor counted once), and what the untied model would have."""
        total = sum(p.numel() for p in self.parameters())  # .parameters() yields a shared tensor once
        embedding = self.encoder.embedding.weight.numel()
        return {"total": total, "embedding": embedding, "untied_total": total + embedding if self.tied else total}
