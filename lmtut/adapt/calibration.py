"""Chapter 9: softmax temperature calibration (Guo et al., 2017, *On Calibration of
Modern Neural Networks*).

One number T divides the logits before the softmax, ``p_T = softmax(z / T)``: T > 1
flattens an over-confident model's distribution, T < 1 sharpens an under-confident one.
T is fitted on the validation split by minimizing its negative log-likelihood, and then
applied, unchanged, to test: it can never be fitted on the split it reports.

With the adaptive softmax of Grave et al. (2017) a word's probability is a product of
softmaxes, the head's (over the frequent words and one entry per tail cluster) and, for
a rare word, its cluster's. The temperature divides the logits of every one of them:
``log p_T(w) = log softmax(z_head / T)[c(w)] + log softmax(z_c(w) / T)[w]``.
:meth:`lmtut.TransformerLM.logit_groups` gives those softmaxes as logits, whatever
layers produce them. (Dividing the hidden state by T before the classifier is the same
thing only when every projection after it is linear without a bias, as the adaptive
softmax's are; the full softmax's last layer has a bias, and ``classifier_layers > 1``
adds a nonlinearity. The tests check both against a classifier whose output weights and
biases are divided by T.)

The fit is Newton's method on beta = 1 / T: the NLL is convex in beta, with derivative
``E_p[z] - z_target`` and second derivative ``Var_p[z]`` summed over the softmaxes; a
few passes over the hidden states suffice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmtut.model import TransformerLM


def temperature_log_probs(
    model: TransformerLM,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(N,) float64 log p_T(target) for hidden states (N, d) and targets (N,): every
    softmax's logits divided by T."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    out = torch.zeros(len(targets), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(targets), chunk_size):
            h, y = (
                hidden[start : start + chunk_size],
                targets[start : start + chunk_size].to(hidden.device),
            )
            total = torch.zeros(len(y), dtype=torch.float64, device=hidden.device)
            for rows, logits, column in model.logit_groups(h, y):
                picked = F.log_softmax(logits / temperature, dim=-1).gather(
                    -1, column[:, None]
                )[:, 0]
                total.index_add_(0, rows, picked.double())
            out[start : start + len(y)] = total.cpu()
    return out


def _newton_terms(
    model: TransformerLM,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    chunk_size: int,
) -> tuple[float, float]:
    """The first and second derivatives in beta of the NLL, summed over the tokens."""
    grad = curvature = 0.0
    with torch.no_grad():
        for start in range(0, len(targets), chunk_size):
            h, y = (
                hidden[start : start + chunk_size],
                targets[start : start + chunk_size].to(hidden.device),
            )
            for _, z, column in model.logit_groups(h, y):
                p = torch.softmax(beta * z, dim=-1)
                mean = (p * z).sum(-1)
                grad += (
                    (mean - z.gather(-1, column[:, None])[:, 0]).double().sum().item()
                )
                curvature += (
                    (p * (z - mean[:, None]) ** 2).sum(-1).double().sum().item()
                )
    return grad, curvature


def fit_temperature(
    model: TransformerLM,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    max_iter: int = 20,
    tol: float = 1e-5,
    chunk_size: int = 1024,
    show_bar: bool = True,
) -> float:
    """The temperature T that minimizes the NLL of ``targets`` given ``hidden`` (pass
    the validation split's)."""
    if len(targets) == 0:
        raise ValueError("no token to fit a temperature on")
    beta = 1.0
    for _ in tqdm(
        range(max_iter),
        desc="fitting the temperature",
        leave=False,
        disable=not show_bar,
    ):
        grad, curvature = _newton_terms(model, hidden, targets, beta, chunk_size)
        if curvature <= 0:  # every softmax is certain: no temperature changes anything
            break
        # a safeguarded Newton step
        new_beta = min(max(beta - grad / curvature, beta / 4), beta * 4)
        done = abs(new_beta - beta) <= tol * beta
        beta = new_beta
        if done:
            break
    if not math.isfinite(beta):
        raise FloatingPointError("the temperature fit diverged")
    return 1.0 / beta
