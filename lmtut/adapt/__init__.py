"""Chapter 9: the adaptation steps of ``python -m lmtut.evaluate``, as functions that
chapter 9 calls too.

Each one tunes its hyperparameters on the validation split (or its first
``tune_tokens``), applies them unchanged to every split it is given, prints one line and
returns a JSON-ready record: the method, its settings, what they were tuned on, the
grid, the perplexities and the seconds it took.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from lmtut.adapt.calibration import fit_temperature, temperature_log_probs
from lmtut.adapt.dynamic import (
    DynamicTuning,
    dynamic_evaluation,
    gradient_rms,
    tune_dynamic_evaluation,
)
from lmtut.adapt.neural_cache import neural_cache_scores, tune_neural_cache
from lmtut.datasets import LanguageModelingDataset
from lmtut.scoring import ScoredStream, TokenScores

ADAPTED = "adapted at test time"


def report(name: str, detail: str, scores: dict[str, TokenScores]) -> None:
    shown = ", ".join(
        f"{split} perplexity {s.perplexity:.2f}" for split, s in scores.items()
    )
    print(f"{name} ({detail}): {shown}")


def perplexities(scores: dict[str, TokenScores]) -> dict[str, float]:
    return {split: s.perplexity for split, s in scores.items()}


def calibrate_temperature(
    model: nn.Module,
    streams: dict[str, ScoredStream],
    tune_tokens: int | None = None,
    show_bar: bool = True,
) -> dict[str, Any]:
    """One softmax temperature (Guo et al., 2017) fitted on ``streams["valid"]``,
    applied to every stream."""
    start = time.perf_counter()
    tune = streams["valid"].first(tune_tokens)
    T = fit_temperature(model, tune.hidden, tune.targets, show_bar=show_bar)
    scores = {
        s: TokenScores(
            st.targets, temperature_log_probs(model, st.hidden, st.targets, T)
        )
        for s, st in streams.items()
    }
    report(
        "temperature calibration", f"static model, T = {T:.3f} fitted on valid", scores
    )
    return {
        "method": "one softmax temperature (Guo et al., 2017) over every softmax "
        "of the classifier",
        "fitted on": "valid",
        "fitted on tokens": tune.num_tokens,
        "temperature": T,
        "perplexity": perplexities(scores),
        "seconds": time.perf_counter() - start,
    }


def adapt_with_neural_cache(
    streams: dict[str, ScoredStream],
    cache_size: int,
    thetas: Sequence[float],
    lambdas: Sequence[float],
    tune_tokens: int | None = None,
    show_bar: bool = True,
) -> dict[str, Any]:
    """The neural cache (Grave et al., 2017), theta and lambda tuned on
    ``streams["valid"]``, on every stream."""
    start = time.perf_counter()
    tune = streams["valid"].first(tune_tokens)
    tuning = tune_neural_cache(tune, cache_size, thetas, lambdas, show_bar=show_bar)
    scores = {
        s: neural_cache_scores(st, cache_size, tuning.theta, tuning.lam)
        for s, st in streams.items()
    }
    report(
        f"{ADAPTED}, neural cache",
        f"size {cache_size}, theta {tuning.theta:g}, "
        f"lambda {tuning.lam:g}, "
        "tuned on valid",
        scores,
    )
    grid = [
        {"theta": t, "lambda": lam, "perplexity": tuning.grid[i][j]}
        for i, t in enumerate(tuning.thetas)
        for j, lam in enumerate(tuning.lambdas)
    ]
    return {
        "method": "neural cache (Grave et al., 2017) over the encoder's last "
        "hidden states",
        "hyperparameters": {
            "cache_size": cache_size,
            "theta": tuning.theta,
            "lambda": tuning.lam,
        },
        "tuned on": "valid",
        "tuned on tokens": tune.num_tokens,
        "grid": grid,
        "perplexity": perplexities(scores),
        "seconds": time.perf_counter() - start,
    }


#: dynamic evaluation's default grids, searched on valid, per rule
DYNAMIC_DEFAULTS = {
    "sgd": {"lr": [0.01, 0.03, 0.1], "decay": [0.0]},
    "rms": {"lr": [1e-4, 2e-4, 4e-4], "decay": [0.0, 1e-3, 3e-3]},
}


@dataclass
class DynamicSettings:
    """What dynamic evaluation is asked to do (the flags of ``lmtut.evaluate``'s dynamic
    evaluation group)."""

    rule: str = "rms"
    # the grid searched on valid
    lrs: Sequence[float] = tuple(DYNAMIC_DEFAULTS["rms"]["lr"])
    decays: Sequence[float] = tuple(DYNAMIC_DEFAULTS["rms"]["decay"])
    eps: float = 1e-3
    # the rms rule's statistics from the first N training batches (None: all)
    stat_batches: int | None = None
    batch_size: int = 32  # training windows per batch of the statistics
    precision: str = "fp32"
    show_bar: bool = True

    def evaluation(self) -> dict[str, Any]:
        """The keyword arguments that every dynamic evaluation of these settings
        takes."""
        return dict(
            rule=self.rule,
            eps=self.eps,
            precision=self.precision,
            show_bar=self.show_bar,
        )


def control_windows(
    train: LanguageModelingDataset, evaluated: LanguageModelingDataset
) -> LanguageModelingDataset:
    """The control's windows: the training split's start, cut like ``evaluated``, one
    window for each of its own."""
    return train.first(
        evaluated.num_targets + evaluated.max_sequence_length,
        batch_step=evaluated.batch_step,
    )


def adapt_dynamically(
    model: nn.Module,
    windows: dict[str, LanguageModelingDataset],
    train: LanguageModelingDataset | None,
    settings: DynamicSettings,
    tune_tokens: int | None = None,
    control_split: str | None = None,
) -> dict[str, Any]:
    """Dynamic evaluation (Krause et al., 2018) tuned on ``windows["valid"]`` (its first
    ``tune_tokens``) and run on every split of ``windows``; ``train``: the training
    windows of the rms rule's statistics and of the control. ``control_split``: also the
    control on that split (as many steps, on training text)."""
    start, s = time.perf_counter(), settings
    common = s.evaluation()
    rms = None
    if s.rule == "rms":
        if train is None:
            raise ValueError(
                "the rms rule needs the training windows for its gradient statistics"
            )
        rms = gradient_rms(
            model, train, s.batch_size, s.stat_batches, s.precision, s.show_bar
        )
    statistics_seconds = time.perf_counter() - start
    tune = windows["valid"].first(tune_tokens)
    tuning = tune_dynamic_evaluation(model, tune, s.lrs, s.decays, rms=rms, **common)
    warn_unbracketed(tuning)
    seconds, scores = {}, {}
    for split, dataset in windows.items():
        t = time.perf_counter()
        scores[split] = (
            tuning.scores
            if dataset is tune
            else dynamic_evaluation(
                model, dataset, tuning.lr, decay=tuning.decay, rms=rms, **common
            )
        )
        seconds[split] = time.perf_counter() - t
    report(
        f"{ADAPTED}, dynamic evaluation",
        f"{s.rule}, lr {tuning.lr:g}, decay {tuning.decay:g}, tuned on valid",
        scores,
    )
    result = {
        "method": "dynamic evaluation (Krause et al., 2018): each window scored, "
        "then one step on it",
        "hyperparameters": dynamic_hyperparameters(tuning, tune, train, s),
        "tuned on": "valid",
        "tuned on tokens": tune.num_targets,
        "grid": tuning.grid,
        "bracketed": tuning.bracketed,
        "perplexity": perplexities(scores),
        "seconds": time.perf_counter() - start,
        "seconds of gradient statistics": statistics_seconds,
        "seconds per 1,000 tokens": {
            split: 1000 * seconds[split] / scores[split].num_tokens
            for split in windows
            if windows[split] is not tune
        },
    }
    if control_split is not None:
        if train is None:
            raise ValueError(
                "the control takes its steps on the training windows: pass train"
            )
        result["control"] = dynamic_control(
            model, windows[control_split], train, tuning, rms, settings, control_split
        )
    return result


def dynamic_hyperparameters(
    tuning: DynamicTuning,
    tune: LanguageModelingDataset,
    train: LanguageModelingDataset | None,
    settings: DynamicSettings,
) -> dict[str, Any]:
    """The chosen setting, the segment, and (rms rule) where the gradient statistics
    came from."""
    hyper = {
        "rule": tuning.rule,
        "lr": tuning.lr,
        "decay": tuning.decay,
        "segment": f"{tune.batch_step} tokens (one predict_last_k window, batch "
        "size 1)",
    }
    if tuning.rule == "rms" and train is not None:
        batches = -(-len(train) // settings.batch_size)
        used = (
            batches
            if settings.stat_batches is None
            else min(batches, settings.stat_batches)
        )
        hyper.update(
            eps=settings.eps,
            gradient_statistics=f"{used:,} of the "
            f"{batches:,} batches of "
            f"{settings.batch_size} training windows"
            + (" (the whole training split)" * (used == batches)),
        )
    return hyper


def warn_unbracketed(tuning: DynamicTuning) -> None:
    """Say loudly when a tuned setting ended on an edge of its (widened) grid: it is a
    corner, not an optimum."""
    for name, inside in tuning.bracketed.items():
        if inside is False:
            value = getattr(tuning, name)
            print(
                f"WARNING: dynamic evaluation's best {name} ({value:g}) lies on the "
                "edge of its grid even after "
                f"widening it: give a wider grid with --dynamic_{name}",
                file=sys.stderr,
            )


def dynamic_control(
    model: nn.Module,
    evaluated: LanguageModelingDataset,
    train: LanguageModelingDataset,
    tuning: DynamicTuning,
    rms: Sequence[torch.Tensor] | None,
    settings: DynamicSettings,
    split: str = "test",
) -> dict[str, Any]:
    """The same steps, at the tuned setting, taken on training text instead of the
    evaluated text."""
    start = time.perf_counter()
    scores = {
        split: dynamic_evaluation(
            model,
            evaluated,
            tuning.lr,
            decay=tuning.decay,
            rms=rms,
            update_on=control_windows(train, evaluated),
            **settings.evaluation(),
        )
    }
    report(
        "control: dynamic evaluation's steps taken on training text",
        f"{tuning.rule}, lr {tuning.lr:g}, decay {tuning.decay:g}",
        scores,
    )
    return {
        "method": "as many steps at the tuned setting, each on the next window of "
        "the training split's start "
        "instead of the window just scored (not adaptation: more training)",
        "perplexity": perplexities(scores),
        "seconds": time.perf_counter() - start,
    }
