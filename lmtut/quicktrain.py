"""Chapters 3 to 5: a short training run, for side-by-side experiments that fit a laptop CPU's budget.

``quick_train`` is the smallest honest training loop: AdamW, linear warmup, gradient clipping, a seeded shuffle,
and validation perplexity measured the right way (``evaluate_perplexity``: unsmoothed, each scored token once).
Chapter 6 replaces it with the full ``Trainer`` (schedules, accumulation, callbacks, checkpoints).
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from lmtut.datasets import LanguageModelingDataLayer, LanguageModelingDataset
from lmtut.loss import PaddedSmoothedCrossEntropyLoss, targets_suffice
from lmtut.perplexity import evaluate_perplexity

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def quick_train(
    model: nn.Module,
    train: LanguageModelingDataset,
    valid: LanguageModelingDataset | None = None,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    warmup_steps: int = 10,
    weight_decay: float = 0.0,
    clip_grad_norm: float = 1.0,
    eval_every: int = 25,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    desc: str = "training",
) -> dict[str, list[float]]:
    """Train ``model`` for ``steps`` batches; return its history (step, train loss, validation perplexity).

    ``loss_fn(log_probs, labels)`` defaults to the plain negative log-likelihood ignoring padding
    (``PaddedSmoothedCrossEntropyLoss`` without smoothing), for which the model scores the targets alone.
    """
    loss_fn = loss_fn or PaddedSmoothedCrossEntropyLoss(train.pad_id)
    targets_only = targets_suffice(loss_fn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps))
    batches = itertools.chain.from_iterable(
        LanguageModelingDataLayer(train, batch_size, shuffle=True,
                                  generator=torch.Generator().manual_seed(seed + epoch))
        for epoch in itertools.count()
    )
    history: dict[str, list[float]] = {"step": [], "train_loss": [], "eval_step": [], "valid_ppl": []}

    def validate(step: int) -> None:
        if valid is not None:
            history["eval_step"].append(step)
            history["valid_ppl"].append(evaluate_perplexity(model, valid, batch_size)[1])

    model.train()
    validate(0)
    start, tokens = time.perf_counter(), 0
    bar = tqdm(range(1, steps + 1), desc=desc, leave=False)
    for step in bar:
        input_ids, input_mask, labels = next(batches)
        loss = loss_fn(model(input_ids, input_mask, targets=labels if targets_only else None), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        schedule.step()
        tokens += input_ids.numel()
        history["step"].append(step)
        history["train_loss"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.2f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
        if step % eval_every == 0 or step == steps:
            validate(step)
    history["tokens_per_s"] = [tokens / (time.perf_counter() - start)]
    return history
