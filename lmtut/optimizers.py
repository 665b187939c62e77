"""Chapters 6 and 7: optimizers by name, as NeMo's ``optimizer_kind`` chose them (adam, adamw, sgd, novograd), and
Muon for the blocks' matrices (``muon``).

NovoGrad (Ginsburg et al., 2019), NeMo's optimizer, keeps Adam's first moment but only one second-moment
*scalar per layer* (the running mean of the squared gradient norm), normalizes each layer's gradient by it, and
adds the weight decay to the normalized gradient. PyTorch has no NovoGrad, so a small implementation follows.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

OPTIMIZERS = ("adam", "adamw", "sgd", "novograd", "muon")


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


#: The quintic Newton-Schulz coefficients of Jordan et al. (2024), the ones ``torch.optim.Muon`` uses.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NEWTON_SCHULZ,
                  eps: float = 1e-7) -> torch.Tensor:
    """Muon's orthogonalization (Jordan et al., 2024), the teaching version of ``torch.optim.Muon``'s (which runs in
    bfloat16; this one in float32): divide G by its Frobenius norm, so that every singular value is at most 1, then
    ``steps`` times X <- aX + b(XX^T)X + c(XX^T)^2 X. Each step maps every singular value s of X to
    a s + b s^3 + c s^5 and keeps the singular vectors, so G = U S V^T ends near U V^T: its singular values are
    pushed towards 1, most of them into about 0.7 to 1.2 with these coefficients, which trade exactness for speed
    (the very smallest rise less far in five steps)."""
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
    """Muon (Jordan et al., 2024; ``torch.optim.Muon``) on the 2-D weights of the Transformer blocks and AdamW on
    every other parameter (embeddings, softmax layers, norms, biases), as one optimizer: one ``param_groups`` list
    for the learning-rate schedule, one ``step``, one ``state_dict`` for checkpoints and an exact resume.

    Muon's update is its momentum orthogonalized by a few Newton-Schulz iterations; ``adjust_lr_fn=
    "match_rms_adamw"`` scales it to the RMS of an AdamW update, so that its learning rate is on AdamW's scale.
    """

    def __init__(self, model: nn.Module, lr: float, muon_lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.95, fused: bool | None = None):
        matrices = [p for name, p in model.named_parameters() if p.dim() == 2 and ".layers." in f".{name}"]
        chosen = {id(p) for p in matrices}
        rest = [g | {"params": [p for p in g["params"] if id(p) not in chosen]}
                for g in parameter_groups(model, weight_decay)]
        rest = [g for g in rest if g["params"]]
        if not matrices:
            raise ValueError("Muon found no 2-D weight in the model's blocks (parameters named '...layers...')")
        self.muon = torch.optim.Muon(matrices, lr=muon_lr, weight_decay=weight_decay, momentum=momentum,
                                     adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(rest, lr=lr, betas=betas, fused=fused) if rest else None
        self.parts = {"muon": self.muon} | ({"adamw": self.adamw} if self.adamw else {})
        groups = [g for part in self.parts.values() for g in part.param_groups]
        super().__init__(groups, {})  # the same group dicts as the parts': the schedule sets both

    @torch.no_grad()
    def step(self, closure=None):
        for part in self.parts.values():
            part.step()

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])
        # loading gives each part new group dicts: share them again, or the schedule would set the old ones
        self.param_groups = [g for part in self.parts.values() for g in part.param_groups]


def get_optimizer(name: str, params: Iterable, lr: float, weight_decay: float = 0.0,
                  betas: tuple[float, float] = (0.9, 0.999), fused: bool | None = None) -> torch.optim.Optimizer:
    """``adam``, ``adamw``, ``sgd`` (momentum = beta1, Nesterov) or ``novograd``; ``params`` may be groups
    (``muon`` needs the model: :class:`MuonAdamW`).

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
    if name == "muon":
        raise ValueError("muon splits a model's parameters between Muon and AdamW: build MuonAdamW(model, ...)")
    raise ValueError(f"unknown optimizer_kind {name!r}; choose one of {', '.join(OPTIMIZERS)}")
