"""Chapters 3 to 5: a short training run, for side-by-side experiments that fit a laptop CPU's budget.

``quick_train`` is chapter 6's ``Trainer`` with a short recipe: AdamW at a constant learning rate after a linear
warmup, gradient clipping, a seeded shuffle, fp32, and validation perplexity measured the right way (unsmoothed,
each scored token once) before the first step and every ``eval_every`` steps. It keeps no checkpoints.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lmtut.callbacks import Callback, SimpleLossLoggerCallback
from lmtut.datasets import LanguageModelingDataset
from lmtut.scoring import model_device
from lmtut.trainer import TrainConfig, Trainer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class History(Callback):
    """Every step's training loss and every validation perplexity, as lists (the loss read back each step)."""

    def __init__(self):
        self.history: dict[str, list[float]] = {"step": [], "train_loss": [], "eval_step": [], "valid_ppl": []}

    def on_step_end(self, trainer, loss):
        self.history["step"].append(trainer.step)
        self.history["train_loss"].append(float(loss))

    def on_log(self, trainer, record):
        if "valid_ppl" in record:
            self.history["eval_step"].append(record["step"])
            self.history["valid_ppl"].append(record["valid_ppl"])


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
    """Train ``model`` for ``steps`` batches, where it is; return its history (step, train loss, validation
    perplexity at ``eval_step``, tokens per second).

    ``loss_fn(log_probs, labels)`` defaults to the plain negative log-likelihood ignoring padding
    (``PaddedSmoothedCrossEntropyLoss`` without smoothing), for which the model scores the targets alone.
    """
    config = TrainConfig(batch_size=batch_size, max_steps=steps, lr=lr, lr_policy="constant",
                         warmup_steps=warmup_steps, weight_decay=weight_decay, clip_grad_norm=clip_grad_norm,
                         eval_every=eval_every, eval_batch_size=batch_size, log_every=steps, seed=seed)
    recorder = History()
    trainer = Trainer(model, train, config, {"valid": valid} if valid is not None else None, loss_fn,
                      callbacks=[recorder, SimpleLossLoggerCallback(desc=desc)], device=model_device(model))
    trainer.evaluate()  # before the first step
    trainer.train()
    return {**recorder.history, "tokens_per_s": [trainer.tokens_seen / max(trainer.train_seconds, 1e-9)]}
