"""Chapter 6: optimizers by name, as NeMo's ``optimizer_kind`` chose them: adam, adamw, sgd and novograd.

NovoGrad (Ginsburg et al., 2019), NeMo's optimizer, keeps Adam's first moment but only one second-moment
*scalar per layer* (the running mean of the squared gradient norm), normalizes each layer's gradient by it, and
adds the weight decay to the normalized gradient. PyTorch has no NovoGrad, so a small implementation follows.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

OPTIMIZERS = ("adam", "adamw", "sgd", "novograd")


class NovoGrad(torch.optim.Optimizer):
    """m = b1 m + (g / sqrt(v) + wd w),  v = b2 v + (1 - b2) ||g||^2 (v = ||g||^2 at the first step),  w -= lr m."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.95, 0.98), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

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


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, LayerNorm weights and positions are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "position" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def get_optimizer(name: str, params: Iterable, lr: float, weight_decay: float = 0.0,
                  betas: tuple[float, float] = (0.9, 0.999), fused: bool | None = None) -> torch.optim.Optimizer:
    """``adam``, ``adamw``, ``sgd`` (momentum = beta1, Nesterov) or ``novograd``; ``params`` may be groups.

    ``fused=True`` asks Adam(W) for its fused kernel (one launch for all parameters; the Trainer uses it on CUDA).
    """
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=betas[0], nesterov=betas[0] > 0, weight_decay=weight_decay)
    if name == "novograd":
        return NovoGrad(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer_kind {name!r}; choose one of {', '.join(OPTIMIZERS)}")
