"""Chapter 8: dynamic evaluation (Krause et al., 2018, *Dynamic Evaluation of Neural Sequence Models*).

The model keeps learning while it reads the test text: the stream is cut into segments, and each segment is
**first scored, then learned from**: one gradient step on the loss of that same, already-scored segment, and on to
the next. Every token is scored exactly once, by weights that have seen only the tokens before it. The other order
(a step on a segment, then scoring it) lets the model see the answers before it is graded, and reports a
perplexity no model can reach.

lmtut's segments are the evaluation windows of the split, in order (``predict_last_k`` windows, batch size 1): a
segment is the k tokens a window scores, read with up to ``L - k`` tokens of context before them, and its step
uses the mean loss of those k tokens. The model stays in eval mode (no dropout), as in Krause et al.

Two update rules (:class:`KrauseUpdate`), with theta_0 the trained weights and g the segment's gradient:

- ``sgd``: theta <- theta - lr * g (plus, with ``decay`` > 0, decay * (theta_0 - theta)).
- ``rms``: theta <- theta - lr * g / (RMS + eps) + decay * r * (theta_0 - theta), Krause et al.'s rule: RMS is the
  root mean square of each weight's gradient over training batches (:func:`gradient_rms`), so weights with small
  gradients move as far as the others, and r = RMS / mean(RMS) (at most 1 / decay) pulls the weights that move
  most back towards the trained model fastest. Krause et al. collected RMS over the whole training split in batches
  of 100 segments; here it is over the first ``max_batches`` batches of training windows (a documented shortcut:
  the statistics settle after a few dozen batches).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from lmtut.datasets import LanguageModelingDataLayer, LanguageModelingDataset
from lmtut.precision import Precision
from lmtut.stream import TokenScores, model_device, scored_positions

RULES = ("sgd", "rms")


class KrauseUpdate(torch.optim.Optimizer):
    """The update of dynamic evaluation: SGD or Krause et al.'s RMS-normalized step, with decay to the start.

    ``rms``: one tensor per parameter, in ``params``' order (:func:`gradient_rms`), for the RMS rule; None for SGD.
    ``decay``: the rate lambda at which the weights are pulled back towards their values at construction.
    A parameter without a gradient this step (an adaptive softmax's cluster no target reached) is only decayed.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, decay: float = 0.0,
                 rms: Sequence[torch.Tensor] | None = None, eps: float = 1e-3):
        params = list(params)
        if lr < 0 or not 0 <= decay < 1 or eps <= 0:
            raise ValueError(f"need lr >= 0, 0 <= decay < 1 and eps > 0, got lr={lr}, decay={decay}, eps={eps}")
        if rms is not None and [r.shape for r in rms] != [p.shape for p in params]:
            raise ValueError("rms must hold one tensor per parameter, of the parameter's shape")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps))
        mean_rms = torch.cat([r.flatten() for r in rms]).mean().clamp_min(1e-30) if rms is not None else None
        for i, p in enumerate(params):
            state = self.state[p]
            state["start"] = p.detach().clone()
            if rms is not None:
                rms_i = rms[i].to(p.device, torch.float32)
                state["denominator"] = rms_i + eps
                rate = decay * rms_i / mean_rms
                state["decay_rate"] = rate.clamp(max=1.0)  # decay * r <= 1: never past the trained weights

    @torch.no_grad()
    def step(self, closure=None):
        """theta <- theta - lr * g [/ (RMS + eps)] + decay [* r] * (theta_0 - theta), all from the current theta."""
        for group in self.param_groups:
            lr, decay = group["lr"], group["decay"]
            for p in group["params"]:
                state = self.state[p]
                if decay:  # theta + w (theta_0 - theta), in one pass; the gradient term does not depend on theta
                    p.lerp_(state["start"], state.get("decay_rate", decay))
                if p.grad is not None:
                    self._descend(p, p.grad, state.get("denominator"), lr)
        return None

    @staticmethod
    def _descend(p: torch.Tensor, grad: torch.Tensor, denominator: torch.Tensor | None, lr: float) -> None:
        """p -= lr * grad [/ denominator]; a sparse gradient (an embedding's rows) touches only its rows."""
        if grad.is_sparse:
            grad = grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
            if denominator is not None:
                values = values / denominator[rows]
            p.index_add_(0, rows, values, alpha=-lr)
        elif denominator is not None:
            p.addcdiv_(grad, denominator, value=-lr)
        else:
            p.add_(grad, alpha=-lr)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On a CPU, run the block on one thread: a batch-1 window's operations are too small to share between threads
    (on the book's 2-core CPU, with other processes running, two threads made dynamic evaluation 60x slower)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def sparse_embedding_gradients(model: nn.Module) -> Iterator[None]:
    """Within the block, ``nn.Embedding`` layers give sparse gradients (PyTorch's ``sparse=True``): a step on a
    window touches its few dozen rows instead of the whole (V, d) table."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    before = [m.sparse for m in embeddings]
    for m in embeddings:
        m.sparse = True
    try:
        yield
    finally:
        for m, sparse in zip(embeddings, before):
            m.sparse = sparse


def segment_loss(model: nn.Module, input_ids: torch.Tensor, input_mask: torch.Tensor, labels: torch.Tensor,
                 pad_id: int, precision: Precision) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss of the scored positions, with its graph; their log-probabilities, detached; their targets).

    The classifier runs on the scored positions only: the context positions need the encoder, not the softmax.
    """
    scored = scored_positions(labels, pad_id)
    with precision.autocast():
        hidden = model.encoder(input_ids, input_mask)
        log_probs = model.classifier.target_log_probs(hidden[scored], labels[scored])
    return -log_probs.float().mean(), log_probs.detach().double(), labels[scored]


def dynamic_evaluation(model: nn.Module, dataset: LanguageModelingDataset, lr: float, rule: str = "sgd",
                       decay: float = 0.0, rms: Sequence[torch.Tensor] | None = None, eps: float = 1e-3,
                       precision: str = "fp32", show_bar: bool = True) -> TokenScores:
    """Every token of ``dataset`` scored once, then learned from: score a window's k tokens, step on them, go on.

    ``rule``: ``sgd`` or ``rms`` (then ``rms``, from :func:`gradient_rms`, is required). The model runs in eval mode
    and gets its trained weights back at the end. Returns each token's log-probability, in stream order.
    """
    if rule not in RULES:
        raise ValueError(f"unknown dynamic evaluation rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "rms" and rms is None:
        raise ValueError("the rms rule needs gradient statistics: rms=gradient_rms(model, train_windows)")
    device, was_training = model_device(model), model.training
    mode = Precision.of(precision, device)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = KrauseUpdate(params, lr, decay, rms if rule == "rms" else None, eps)
    scaler = mode.grad_scaler()  # fp16: scaled gradients, and steps with an overflow skipped
    model.eval()
    log_probs, targets = [], []
    try:
        with torch.enable_grad(), sparse_embedding_gradients(model), one_cpu_thread(device):
            for idx in tqdm(range(len(dataset)), desc=f"dynamic eval ({rule})", leave=False, disable=not show_bar):
                ids, mask, labels = (t.unsqueeze(0).to(device) for t in dataset[idx])
                loss, scored_lp, scored_targets = segment_loss(model, ids, mask, labels, dataset.pad_id, mode)
                log_probs.append(scored_lp.cpu())  # 1. scored, with weights that have not seen these tokens
                targets.append(scored_targets.cpu())
                if len(scored_targets) == 0:
                    continue
                optimizer.zero_grad(set_to_none=True)  # 2. then learned from
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    finally:
        model.load_state_dict(trained)
        model.train(was_training)
    return TokenScores(torch.cat(targets), torch.cat(log_probs))


def gradient_rms(model: nn.Module, train: LanguageModelingDataset, batch_size: int = 32, max_batches: int = 50,
                 precision: str = "fp32", show_bar: bool = True) -> list[torch.Tensor]:
    """Each parameter's root-mean-square gradient over the first ``max_batches`` batches of training windows.

    The statistics of Krause et al.'s RMS rule (their MS_g, square-rooted), one tensor per parameter in
    ``model.parameters()`` order; the model is in eval mode, as during dynamic evaluation, and left unchanged.
    """
    device, was_training = model_device(model), model.training
    mode = Precision.of(precision, device)
    params = [p for p in model.parameters() if p.requires_grad]
    squares = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    model.eval()
    batches = 0
    with torch.enable_grad():
        for input_ids, input_mask, labels in tqdm(LanguageModelingDataLayer(train, batch_size), total=min(
                max_batches, -(-len(train) // batch_size)), desc="gradient statistics", leave=False,
                disable=not show_bar):
            if batches == max_batches:
                break
            batch = (t.to(device) for t in (input_ids, input_mask, labels))
            loss = segment_loss(model, *batch, train.pad_id, mode)[0]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for square, grad in zip(squares, grads):
                if grad is not None:
                    square.add_(grad.float() ** 2)
            batches += 1
    model.train(was_training)
    if batches == 0:
        raise ValueError("no training batch to collect gradient statistics from")
    return [(square / batches).sqrt() for square in squares]


@dataclass
class DynamicTuning:
    """A grid search of dynamic evaluation's learning rate (and decay) on one split: the best point and all."""

    rule: str
    lr: float
    decay: float
    scores: TokenScores  # at the best point, on the split it was tuned on
    grid: list[dict[str, float]] = field(default_factory=list)  # {"lr", "decay", "perplexity"} per point

    @property
    def perplexity(self) -> float:
        return self.scores.perplexity


def tune_dynamic_evaluation(model: nn.Module, dataset: LanguageModelingDataset, lrs: Sequence[float],
                            decays: Sequence[float] = (0.0,), rule: str = "sgd",
                            rms: Sequence[torch.Tensor] | None = None, eps: float = 1e-3, precision: str = "fp32",
                            show_bar: bool = True) -> DynamicTuning:
    """The learning rate and decay of the grid with the lowest perplexity on ``dataset``: pass validation windows."""
    if not lrs or not decays:
        raise ValueError("give at least one learning rate and one decay")
    grid, best = [], None
    for lr in lrs:
        for decay in decays:
            scores = dynamic_evaluation(model, dataset, lr, rule, decay, rms, eps, precision, show_bar)
            grid.append({"lr": float(lr), "decay": float(decay), "perplexity": scores.perplexity})
            if best is None or scores.perplexity < best[0].perplexity or not math.isfinite(best[0].perplexity):
                best = (scores, float(lr), float(decay))
    return DynamicTuning(rule, best[1], best[2], best[0], grid)
