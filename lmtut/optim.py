"""Optimization (chapters 6, 7, 8 and 10): the optimizers by name (NovoGrad, Muon beside
AdamW), learning-rate policies with warmup, the weights' moving average, and the
optimizer step that puts them together.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from lmtut.config import LR_POLICIES, LR_POLICY_NAMES, OPTIMIZERS, TrainConfig
from lmtut.model import TransformerLM
from lmtut.runtime import Precision, model_device

# --------------------------------------------------------------------------------------
# Chapters 6 and 7: optimizers by name, as NeMo's ``optimizer_kind`` chose them (adam,
# adamw, sgd, novograd), and Muon for the blocks' matrices (``muon``).
#
# NovoGrad (Ginsburg et al., 2019), NeMo's optimizer, keeps Adam's first moment but only
# one second-moment *scalar per layer* (the running mean of the squared gradient norm),
# normalizes each layer's gradient by it, and adds the weight decay to the normalized
# gradient. PyTorch has no NovoGrad, so a small implementation follows.


class NovoGrad(torch.optim.Optimizer):
    """m = b1 m + (g / sqrt(v) + wd w),  v = b2 v + (1 - b2) ||g||^2 (v = ||g||^2 at the
    first step),  w -= lr m."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(
            params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                norm_sq = p.grad.pow(2).sum()
                if not state:
                    state["step"] = torch.zeros(())
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = norm_sq.clone()
                else:
                    state["exp_avg_sq"].mul_(beta2).add_(norm_sq, alpha=1 - beta2)
                state["step"] += 1
                update = p.grad / (state["exp_avg_sq"].sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update.add(p, alpha=group["weight_decay"])
                state["exp_avg"].mul_(beta1).add_(update)
                p.add_(state["exp_avg"], alpha=-group["lr"])
        return loss


def parameter_groups(model: TransformerLM, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices that the model declares decayed; none on biases,
    norms' weights and positions (``TransformerLM.parameter_groups``)."""
    groups = model.parameter_groups()
    return [
        {"params": groups["decayed"], "weight_decay": weight_decay},
        {"params": groups["not_decayed"], "weight_decay": 0.0},
    ]


#: The quintic Newton-Schulz coefficients of Jordan et al. (2024), the ones
#: ``torch.optim.Muon`` uses.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    matrix: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NEWTON_SCHULZ,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Muon's orthogonalization (Jordan et al., 2024), the teaching version of
    ``torch.optim.Muon``'s (which runs in bfloat16; this one in float32): divide G by
    its Frobenius norm, so that every singular value is at most 1, then ``steps`` times
    X <- aX + b(XX^T)X + c(XX^T)^2 X. Each step maps every singular value s of X to
    a s + b s^3 + c s^5 and keeps the singular vectors, so G = U S V^T ends near U V^T:
    its singular values are pushed towards 1 (not monotonically: the polynomial
    overshoots and comes back), most of them into about 0.7 to 1.2 with these
    coefficients, which trade exactness for speed."""
    a, b, c = coefficients
    x = matrix.float()
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # X X^T is the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class MuonAdamW(torch.optim.Optimizer):
    """Muon (Jordan et al., 2024; ``torch.optim.Muon``) on the 2-D weights of the
    Transformer blocks and AdamW on every other parameter (embeddings, softmax layers,
    norms, biases), as one optimizer: one ``param_groups`` list for the learning-rate
    schedule, one ``step``, one ``state_dict`` for checkpoints and an exact resume.

    Muon's update is its momentum orthogonalized by a few Newton-Schulz iterations;
    ``adjust_lr_fn= "match_rms_adamw"`` scales it to the RMS of an AdamW update, so that
    its learning rate is on AdamW's scale.
    """

    def __init__(
        self,
        model: TransformerLM,
        lr: float,
        muon_lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.95,
        fused: bool | None = None,
    ):
        matrices = model.parameter_groups()["block_matrices"]
        chosen = set(matrices)
        rest = [
            g | {"params": [p for p in g["params"] if p not in chosen]}
            for g in parameter_groups(model, weight_decay)
        ]
        rest = [g for g in rest if g["params"]]
        if not matrices:
            raise ValueError("Muon found no 2-D weight in the model's blocks")
        self.muon = torch.optim.Muon(
            matrices,
            lr=muon_lr,
            weight_decay=weight_decay,
            momentum=momentum,
            adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = (
            torch.optim.AdamW(rest, lr=lr, betas=betas, fused=fused) if rest else None
        )
        self.parts = {"muon": self.muon} | ({"adamw": self.adamw} if self.adamw else {})
        groups = [g for part in self.parts.values() for g in part.param_groups]
        # the same group dicts as the parts': the schedule sets both
        super().__init__(groups, {})

    @torch.no_grad()
    def step(self, closure=None):
        for part in self.parts.values():
            part.step()

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])
        # loading gives each part new group dicts: share them again, or the schedule
        # would set the old ones
        self.param_groups = [
            g for part in self.parts.values() for g in part.param_groups
        ]


def get_optimizer(
    name: str,
    params: Iterable,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """``adam``, ``adamw``, ``sgd`` (momentum = beta1, Nesterov) or ``novograd``;
    ``params`` may be groups (``muon`` needs the model: :class:`MuonAdamW`).

    ``fused=True`` asks Adam(W) for its fused kernel (one launch for all parameters; the
    Trainer uses it on CUDA).
    """
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused
        )
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=betas[0],
            nesterov=betas[0] > 0,
            weight_decay=weight_decay,
        )
    if name == "novograd":
        return NovoGrad(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "muon":
        raise ValueError(
            "muon splits a model's parameters between Muon and AdamW: "
            "build MuonAdamW(model, ...)"
        )
    raise ValueError(
        f"unknown optimizer_kind {name!r}; choose one of {', '.join(OPTIMIZERS)}"
    )


# --------------------------------------------------------------------------------------
# Chapter 6: learning-rate policies with warmup (NeMo's ``get_lr_policy``), on
# ``torch.optim.lr_scheduler.LambdaLR``.
#
# A policy is a function ``step -> multiplier`` of the base learning rate. Every policy
# starts with a linear warmup from ~0 to 1 over ``warmup_steps`` (or ``warmup_ratio *
# total_steps``), then:
#
# - ``constant``: stays at 1;
# - ``cosine`` (NeMo's ``CosineAnnealing``): half a cosine from 1 down to
#   ``min_lr_ratio`` at ``total_steps``;
# - ``linear`` (NeMo's ``WarmupAnnealing``): a straight line from 1 down to
#   ``min_lr_ratio``;
# - ``inverse_sqrt`` (Vaswani et al., 2017): ``sqrt(warmup_steps / step)`` after the
#   warmup.
#
# ``total_steps`` is the run's own length, so the schedule ends when training ends
# (NeMo's schedule reached 0 after 50,000 steps while training went on).

Policy = Callable[[int], float]


def get_lr_policy(
    name: str,
    total_steps: int,
    warmup_ratio: float | None = None,
    warmup_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> Policy:
    """The multiplier function of policy ``name`` for a run of ``total_steps`` optimizer
    steps."""
    key = LR_POLICIES.get(name.lower())
    if key is None:
        raise ValueError(
            f"unknown lr_policy {name!r}; choose one of {', '.join(LR_POLICY_NAMES)}"
        )
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps is not None and warmup_ratio is not None:
        raise ValueError("give warmup_steps or warmup_ratio, not both")
    warmup = (
        warmup_steps
        if warmup_steps is not None
        else int(round((warmup_ratio or 0.0) * total_steps))
    )
    decay_steps = max(total_steps - warmup, 1)

    # step counts from 0: the multiplier for the (step + 1)-th update
    def policy(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if key == "constant":
            return 1.0
        if key == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / max(step, 1))
        progress = min((step - warmup) / decay_steps, 1.0)
        shape = (
            0.5 * (1 + math.cos(math.pi * progress))
            if key == "cosine"
            else 1 - progress
        )
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return policy


def build_scheduler(
    optimizer: torch.optim.Optimizer, policy: Policy
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, policy)


# --------------------------------------------------------------------------------------
# Chapter 8: weight averaging (Polyak & Juditsky, 1992), as an exponential moving
# average of the weights.
#
# Training ends wherever the last noisy steps left the weights; the average of the
# weights over the last steps lies nearer the bottom of the valley they bounce around
# in, and usually generalizes better. Polyak averaging weighs all steps equally;
# AWD-LSTM (Merity et al., 2018) switches its SGD to averaging once validation stalls.
# An exponential moving average (EMA) with ``decay`` d weighs step k of n by d^(n-k), a
# window of about 1 / (1 - d) steps:
#
#     average_n = sum_k d^(n-k) w_k / sum_k d^(n-k),   k = 1 .. n
#
# (w_k: the weights after optimizer step k)
#
# Divided by its total weight, the average is unbiased from the first step on (as Adam's
# moment estimates are): after a few steps it is their plain mean, after many the
# familiar EMA. It is updated in place as ``average += (w_n - average) * (1 - d) / (1 -
# d^n)``.
#
# PyTorch's ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` keeps
# the plain EMA, which starts from the first step's weights and so, for a decay of
# 0.999, remembers them for thousands of steps; and it reads its step counter from the
# device twice per update, a host-device synchronization per step that the Trainer
# otherwise avoids. ``WeightAverage`` keeps the counter on the host; the update is the
# same ``torch._foreach_lerp_`` call.


class WeightAverage:
    """An exponential moving average of a model's parameters, kept in a copy of the
    model (``average.model``).

    ``update(model)`` after every optimizer step; evaluate or save ``average.model`` (in
    eval mode, no gradients). Buffers are copied as they are (lmtut's models have no
    running statistics).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.count = decay, 0
        # deepcopy keeps tied weights tied
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def weight(self) -> float:
        """How far the next update moves the average towards the current weights: (1 -
        d) / (1 - d^n)."""
        return (1 - self.decay) / (1 - self.decay ** (self.count + 1))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current parameters into the average (the first update copies
        them)."""
        averaged, current = (
            list(self.model.parameters()),
            [p.detach() for p in model.parameters()],
        )
        if len(averaged) != len(current):
            raise ValueError(
                f"the model has {len(current)} parameters, its average {len(averaged)}"
            )
        torch._foreach_lerp_(averaged, current, self.weight())
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "count": self.count,
            "decay": self.decay,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.count = int(state["count"])


# --------------------------------------------------------------------------------------
# Chapters 6 and 10: an optimizer step, from gradients to updated weights.
#
# :class:`Optimization` owns the optimizer (its parameter groups: no weight decay on
# biases, norms and positions), the learning-rate schedule over the run's steps, fp16's
# gradient scaler, gradient clipping and the policy for steps that fp16 skips;
# ``state_dict`` holds all of them, for an exact resume.


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Optimization:
    """``scale(loss).backward()``, then ``step()``: clip, update (fp16: unless the
    scaler skips it), schedule."""

    def __init__(
        self,
        model: TransformerLM,
        config: TrainConfig,
        total_steps: int,
        precision: Precision,
    ):
        self.model, self.config = model, config
        fused = model_device(model).type == "cuda"
        betas = (config.beta1, config.beta2)
        if config.optimizer_kind.lower() == "muon":
            self.optimizer = MuonAdamW(
                model,
                config.lr,
                config.muon_lr or config.lr,
                config.weight_decay,
                betas,
                config.muon_momentum,
                fused=fused,
            )
        else:
            self.optimizer = get_optimizer(
                config.optimizer_kind,
                parameter_groups(model, config.weight_decay),
                config.lr,
                config.weight_decay,
                betas,
                fused=fused,
            )
        warmup = (
            dict(warmup_steps=config.warmup_steps)
            if config.warmup_steps is not None
            else dict(warmup_ratio=config.warmup_ratio)
        )
        policy = get_lr_policy(
            config.lr_policy, total_steps, min_lr_ratio=config.min_lr_ratio, **warmup
        )
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
        """Optimizer step number ``step`` (from 1): clip, update, schedule, and clear
        the gradients."""
        if self.config.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.config.clip_grad_norm
            )
        skipped = self.update()
        # the schedule counts every step, skipped or not, so that it still ends with the
        # run
        if skipped:
            # PyTorch warns that the optimizer did not step: we know
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            self.check_skipped(step)
        else:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def update(self) -> bool:
        """The optimizer's update; with fp16, through the scaler, which skips a step
        whose gradients overflowed. Returns whether it was skipped."""
        if not self.scaler.is_enabled():
            self.optimizer.step()
            return False
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # the scale drops only after an overflow
        skipped = self.scaler.get_scale() < scale
        self.skipped_steps += skipped
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        return skipped

    def check_skipped(self, step: int) -> None:
        """Stop after ``max_skipped_steps`` skipped steps in a row: then no scale makes
        the gradients finite."""
        if self.skipped_in_a_row >= self.config.max_skipped_steps:
            raise TrainingDiverged(
                f"fp16 loss scaling skipped {self.skipped_in_a_row} steps in a row "
                "(scale now "
                f"{self.scaler.get_scale():g}) at step {step}: the gradients are not "
                "finite at any "
                "scale. Try --precision amp-bf16 or fp32, a lower --lr, or resume from "
                "the last checkpoint"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "skipped_in_a_row": self.skipped_in_a_row,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
