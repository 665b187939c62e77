"""Chapter 8: weight averaging (Polyak & Juditsky, 1992), as an exponential moving average of the weights.

Training ends wherever the last noisy steps left the weights; the average of the weights over the last steps lies
nearer the bottom of the valley they bounce around in, and usually generalizes better. Polyak averaging weighs all
steps equally; AWD-LSTM (Merity et al., 2018) switches its SGD to averaging once validation stalls. An exponential
moving average (EMA) with ``decay`` d weighs step k of n by d^(n-k), a window of about 1 / (1 - d) steps:

    average_n = sum_k d^(n-k) w_k / sum_k d^(n-k),   k = 1 .. n (the weights after each optimizer step)

Divided by its total weight, the average is unbiased from the first step on (as Adam's moment estimates are): after
a few steps it is their plain mean, after many the familiar EMA. It is updated in place as
``average += (w_n - average) * (1 - d) / (1 - d^n)``.

PyTorch's ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` keeps the plain EMA, which starts
from the first step's weights and so, for a decay of 0.999, remembers them for thousands of steps; and it reads its
step counter from the device twice per update, a host-device synchronization per step that the Trainer otherwise
avoids. ``WeightAverage`` keeps the counter on the host; the update is the same ``torch._foreach_lerp_`` call.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of a model's parameters, kept in a copy of the model (``average.model``).

    ``update(model)`` after every optimizer step; evaluate or save ``average.model`` (in eval mode, no gradients).
    Buffers are copied as they are (lmtut's models have no running statistics).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay, self.count = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)  # deepcopy keeps tied weights tied

    def weight(self) -> float:
        """How far the next update moves the average towards the current weights: (1 - d) / (1 - d^n)."""
        return (1 - self.decay) / (1 - self.decay ** (self.count + 1))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current parameters into the average (the first update copies them)."""
        averaged, current = list(self.model.parameters()), [p.detach() for p in model.parameters()]
        if len(averaged) != len(current):
            raise ValueError(f"the model has {len(current)} parameters, its average {len(averaged)}")
        torch._foreach_lerp_(averaged, current, self.weight())
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "count": self.count, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.count = int(state["count"])
