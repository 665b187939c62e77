"""Chapters 6 and 10: an optimizer step, from gradients to updated weights.

:class:`Optimization` owns the optimizer (its parameter groups: no weight decay on biases, norms and positions),
the learning-rate schedule over the run's steps, fp16's gradient scaler, gradient clipping and the policy for
steps that fp16 skips; ``state_dict`` holds all of them, for an exact resume.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from lmtut.lr_policies import build_scheduler, get_lr_policy
from lmtut.optimizers import MuonAdamW, get_optimizer, parameter_groups
from lmtut.precision import Precision
from lmtut.scoring import model_device
from lmtut.train_config import TrainConfig


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Optimization:
    """``scale(loss).backward()``, then ``step()``: clip, update (fp16: unless the scaler skips it), schedule."""

    def __init__(self, model: nn.Module, config: TrainConfig, total_steps: int, precision: Precision):
        self.model, self.config = model, config
        fused = model_device(model).type == "cuda"
        betas = (config.beta1, config.beta2)
        if config.optimizer_kind.lower() == "muon":
            self.optimizer = MuonAdamW(model, config.lr, config.muon_lr or config.lr, config.weight_decay, betas,
                                       config.muon_momentum, fused=fused)
        else:
            self.optimizer = get_optimizer(config.optimizer_kind, parameter_groups(model, config.weight_decay),
                                           config.lr, config.weight_decay, betas, fused=fused)
        warmup = dict(warmup_steps=config.warmup_steps) if config.warmup_steps is not None else dict(
            warmup_ratio=config.warmup_ratio)
        policy = get_lr_policy(config.lr_policy, total_steps, min_lr_ratio=config.min_lr_ratio, **warmup)
        self.scheduler = build_scheduler(self.optimizer, policy)
        self.scaler = precision.grad_scaler()
        self.skipped_steps = self.skipped_in_a_row = 0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def loss_scale(self) -> float | None:
        """fp16's current loss scale (None when no scaler is used)."""
        return self.scaler.get_scale() if self.scaler.is_enabled() else None

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call ``backward`` on (fp16: times the loss scale)."""
        return self.scaler.scale(loss)

    def step(self, step: int) -> None:
        """Optimizer step number ``step`` (from 1): clip, update, schedule, and clear the gradients."""
        if self.config.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        skipped = self.update()
        if skipped:  # the schedule counts every step, skipped or not, so that it still ends with the run
            with warnings.catch_warnings():  # PyTorch warns that the optimizer did not step: we know
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            self.check_skipped(step)
        else:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def update(self) -> bool:
        """The optimizer's update; with fp16, through the scaler, which skips a step whose gradients overflowed.
        Returns whether it was skipped."""
        if not self.scaler.is_enabled():
            self.optimizer.step()
            return False
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = self.scaler.get_scale() < scale  # the scale drops only after an overflow
        self.skipped_steps += skipped
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        return skipped

    def check_skipped(self, step: int) -> None:
        """Stop after ``max_skipped_steps`` skipped steps in a row: then no scale makes the gradients finite."""
        if self.skipped_in_a_row >= self.config.max_skipped_steps:
            raise TrainingDiverged(
                f"fp16 loss scaling skipped {self.skipped_in_a_row} steps in a row (scale now "
                f"{self.scaler.get_scale():g}) at step {step}: the gradients are not finite at any "
                "scale. Try --precision amp-bf16 or fp32, a lower --lr, or resume from the last checkpoint"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps,
                "skipped_in_a_row": self.skipped_in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
