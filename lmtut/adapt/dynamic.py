"""Chapter 9: dynamic evaluation (Krause et al., 2018, *Dynamic Evaluation of Neural
Sequence Models*).

The model keeps learning while it reads the test text: the stream is cut into segments,
and each segment is **first scored, then learned from**: one gradient step on the loss
of that same, already-scored segment, and on to the next. Every token is scored exactly
once, by weights that have seen only the tokens before it. The other order (a step on a
segment, then scoring it) lets the model see the answers before it is graded, and
reports a perplexity no model can reach.

lmtut's segments are the evaluation windows of the split, in order (``predict_last_k``
windows, batch size 1): a segment is the k tokens a window scores, read with up to ``L -
k`` tokens of context before them, and its step uses the mean loss of those k tokens.
The model stays in eval mode (no dropout), as in Krause et al.

Two update rules (:class:`KrauseUpdate`), with theta_0 the trained weights and g the
segment's gradient:

- ``sgd``: theta <- theta - lr * g (plus, with ``decay`` > 0, decay * (theta_0 -
  theta)).
- ``rms``: theta <- theta - lr * g / (RMS + eps) + decay * r * (theta_0 - theta), Krause
  et al.'s rule: RMS is the root mean square of each weight's gradient over the batches
  of the whole training split (:func:`gradient_rms`, as in Krause et al.'s code), so
  weights with small gradients move as far as the others, and r = RMS / (the mean over
  the parameter tensors of their mean RMS), clipped at 1 / decay, pulls the weights that
  move most back towards the trained model fastest.

The decay acts on every weight at every step, most of them rows of the embedding that
the window does not read. :class:`KrauseUpdate` applies it to such a row only when the
row is next read or stepped, as theta_0 + (1 - rate)^n (theta - theta_0) for the n steps
it waited: the same weights up to float rounding, without touching the whole (V, d)
table at every window.

Two checks come with it. :func:`tune_dynamic_evaluation` widens its grid while the best
setting lies on an edge of it (:func:`bracketed`), so that the chosen setting is an
optimum, not a corner. And ``update_on`` gives the control of
:func:`dynamic_evaluation`: the same number of steps taken on training windows instead
of the evaluated ones, scored on the evaluated ones, which separates adapting to the
text from merely training more.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from lmtut.datasets import LanguageModelingDataset
from lmtut.runtime import Precision, model_device
from lmtut.scoring import TokenScores, evaluating, score_windows, scored_batches

RULES = ("sgd", "rms")


class KrauseUpdate(torch.optim.Optimizer):
    """The update of dynamic evaluation: SGD or Krause et al.'s RMS-normalized step,
    with decay to the start.

    ``rms``: one tensor per parameter, in ``params``' order (:func:`gradient_rms`), for
    the RMS rule; None for SGD. ``decay``: the rate lambda at which the weights are
    pulled back towards their values at construction. A parameter without a gradient
    this step (an adaptive softmax's cluster no target reached) is only decayed.
    ``lazy``: parameters read a few rows at a time (an embedding with sparse gradients,
    read only by its lookups): a row's decay waits until :meth:`catch_up` (call it with
    the rows about to be read) or a step touches the row.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        decay: float = 0.0,
        rms: Sequence[torch.Tensor] | None = None,
        eps: float = 1e-3,
        lazy: Iterable[nn.Parameter] = (),
    ):
        params = list(params)
        if lr < 0 or not 0 <= decay < 1 or eps <= 0:
            raise ValueError(
                f"need lr >= 0, 0 <= decay < 1 and eps > 0, got lr={lr}, "
                f"decay={decay}, eps={eps}"
            )
        if rms is not None and [r.shape for r in rms] != [p.shape for p in params]:
            raise ValueError(
                "rms must hold one tensor per parameter, of the parameter's shape"
            )
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps))
        self.steps = 0
        mean_rms = (
            torch.stack([r.float().mean() for r in rms]).mean().clamp_min(1e-30)
            if rms is not None
            else None
        )
        lazy_ids = {id(p) for p in lazy}
        for i, p in enumerate(params):
            state = self.state[p]
            state["start"] = p.detach().clone()
            if rms is not None:
                rms_i = rms[i].to(p.device, torch.float32)
                state["denominator"] = rms_i + eps
                rate = decay * rms_i / mean_rms
                # decay * r <= 1: never past the trained weights
                state["decay_rate"] = rate.clamp(max=1.0)
            if id(p) in lazy_ids and p.dim() >= 1:
                # steps applied
                state["updated"] = torch.zeros(
                    p.size(0), dtype=torch.long, device=p.device
                )

    @torch.no_grad()
    def step(self, closure=None):
        """theta <- theta - lr * g [/ (RMS + eps)] + decay [* r] * (theta_0 - theta),
        all from the current theta."""
        for group in self.param_groups:
            lr, decay = group["lr"], group["decay"]
            for p in group["params"]:
                state = self.state[p]
                if "updated" in state:
                    self._lazy_step(p, state, decay, lr)
                    continue
                # theta + w (theta_0 - theta), in one pass; the gradient term does not
                # depend on theta
                if decay:
                    p.lerp_(state["start"], state.get("decay_rate", decay))
                if p.grad is not None:
                    self._descend(p, p.grad, state.get("denominator"), lr)
        self.steps += 1
        return None

    def _lazy_step(self, p: torch.Tensor, state: dict, decay: float, lr: float) -> None:
        """The step of a lazily decayed parameter: only the rows of its (sparse)
        gradient are brought up to date."""
        if p.grad is None:
            return  # every row waits for its decay
        rows = values = None  # a dense gradient touches every row
        if p.grad.is_sparse:
            grad = p.grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
        self._catch_up(p, state, rows, decay)
        self._lazy_rows_step(p, state, rows, decay, lr, values)

    def _lazy_rows_step(
        self,
        p: torch.Tensor,
        state: dict,
        rows: torch.Tensor | None,
        decay: float,
        lr: float,
        values: torch.Tensor | None = None,
    ) -> None:
        """This step's decay and descent on ``rows`` (all rows for None), which are up
        to date before it."""
        index = slice(None) if rows is None else rows
        if decay:
            start, rate = state["start"][index], state.get("decay_rate", decay)
            p[index] = p[index].lerp(
                start, rate if isinstance(rate, float) else rate[index]
            )
        grad = p.grad if values is None else values
        denominator = state.get("denominator")
        step = grad / denominator[index] if denominator is not None else grad
        p[index] = p[index] - lr * step
        state["updated"][index] = self.steps + 1

    @torch.no_grad()
    def catch_up(self, p: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Apply to ``rows`` of ``p`` (every row for None) the decay of the steps they
        waited, before they are read."""
        if "updated" in self.state.get(p, {}):
            decay = next(
                g["decay"]
                for g in self.param_groups
                if any(q is p for q in g["params"])
            )
            self._catch_up(
                p,
                self.state[p],
                None if rows is None else rows.flatten().unique(),
                decay,
            )

    def _catch_up(
        self, p: torch.Tensor, state: dict, rows: torch.Tensor | None, decay: float
    ) -> None:
        """theta_0 + (1 - rate)^n (theta - theta_0) on rows that waited n steps: n lerps
        in one."""
        index = slice(None) if rows is None else rows
        waited = self.steps - state["updated"][index]
        if decay and bool((waited > 0).any()):
            rate = state.get("decay_rate", decay)
            rate = (
                torch.full_like(p[index], rate)
                if isinstance(rate, float)
                else rate[index]
            )
            shape = (-1,) + (1,) * (p.dim() - 1)
            kept = (1 - rate) ** waited.view(shape).to(rate.dtype)
            start = state["start"][index]
            p[index] = start + kept * (p[index] - start)
        state["updated"][index] = self.steps

    @staticmethod
    def _descend(
        p: torch.Tensor, grad: torch.Tensor, denominator: torch.Tensor | None, lr: float
    ) -> None:
        """p -= lr * grad [/ denominator]; a sparse gradient (an embedding's rows)
        touches only its rows."""
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
    """On a CPU, run the block on one thread: a batch-1 window's operations are too
    small to share between threads (on the book's 2-core CPU, with other processes
    running, two threads made dynamic evaluation 60x slower)."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def sparse_embedding_gradients(model: nn.Module) -> Iterator[None]:
    """Within the block, ``nn.Embedding`` layers give sparse gradients (PyTorch's
    ``sparse=True``): a step on a window touches its few dozen rows instead of the whole
    (V, d) table."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    before = [m.sparse for m in embeddings]
    for m in embeddings:
        m.sparse = True
    try:
        yield
    finally:
        for m, sparse in zip(embeddings, before):
            m.sparse = sparse


def lookup_only_embeddings(model: nn.Module) -> list[nn.Embedding]:
    """The embeddings whose weight no other module uses (not tied to a softmax layer):
    read only by lookups."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding) and owners[id(m.weight)] == 1
    ]


@contextmanager
def rows_caught_up_when_read(
    embeddings: Sequence[nn.Embedding], optimizer: KrauseUpdate
) -> Iterator[None]:
    """Within the block, each lookup first brings the rows it reads up to date with the
    optimizer's decay."""
    hooks = [
        m.register_forward_pre_hook(
            lambda m, args: optimizer.catch_up(m.weight, args[0])
        )
        for m in embeddings
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def dynamic_evaluation(
    model: nn.Module,
    dataset: LanguageModelingDataset,
    lr: float,
    rule: str = "sgd",
    decay: float = 0.0,
    rms: Sequence[torch.Tensor] | None = None,
    eps: float = 1e-3,
    precision: str = "fp32",
    show_bar: bool = True,
    update_on: LanguageModelingDataset | None = None,
) -> TokenScores:
    """Every token of ``dataset`` scored once, then learned from: score a window's k
    tokens, step on them, go on.

    ``rule``: ``sgd`` or ``rms`` (then ``rms``, from :func:`gradient_rms`, is required).
    The model runs in eval mode and gets its trained weights back at the end. Returns
    each token's log-probability, in stream order. ``update_on``: the control. Window
    i's step is taken on window i of these windows (training text) instead of the window
    just scored: as many steps, on text the evaluation never sees.
    """
    if rule not in RULES:
        raise ValueError(
            f"unknown dynamic evaluation rule {rule!r}; choose one of "
            f"{', '.join(RULES)}"
        )
    if rule == "rms" and rms is None:
        raise ValueError(
            "the rms rule needs gradient statistics: "
            "rms=gradient_rms(model, train_windows)"
        )
    if update_on is not None and len(update_on) < len(dataset):
        raise ValueError(
            f"the control needs a window to step on per scored window: "
            f"{len(update_on)} windows for "
            f"{len(dataset)}; pass a longer split (the training split)"
        )
    device = model_device(model)
    mode = Precision.of(precision, device)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    lookups = lookup_only_embeddings(model)
    optimizer = KrauseUpdate(
        params,
        lr,
        decay,
        rms if rule == "rms" else None,
        eps,
        lazy=[m.weight for m in lookups],
    )
    # fp16: scaled gradients, and steps with an overflow skipped
    scaler = mode.grad_scaler()
    log_probs, targets = [], []
    try:
        with (
            evaluating(model),
            torch.enable_grad(),
            sparse_embedding_gradients(model),
            one_cpu_thread(device),
            rows_caught_up_when_read(lookups, optimizer),
        ):
            for idx in tqdm(
                range(len(dataset)),
                desc=f"dynamic eval ({rule})",
                leave=False,
                disable=not show_bar,
            ):
                window = (t.unsqueeze(0).to(device) for t in dataset[idx])
                scores = score_windows(model, *window, dataset.pad_id, mode)
                # 1. scored, by weights that have not
                log_probs.append(scores.log_probs.detach().double().cpu())
                targets.append(scores.targets.cpu())  # seen these tokens
                loss = scores.mean_loss()
                # the control: the step is on training text instead
                if update_on is not None:
                    window = (t.unsqueeze(0).to(device) for t in update_on[idx])
                    loss = score_windows(
                        model, *window, update_on.pad_id, mode
                    ).mean_loss()
                elif len(scores.targets) == 0:
                    continue
                optimizer.zero_grad(set_to_none=True)  # 2. then learned from
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    finally:
        model.load_state_dict(trained)
    return TokenScores(torch.cat(targets), torch.cat(log_probs))


def gradient_rms(
    model: nn.Module,
    train: LanguageModelingDataset,
    batch_size: int = 32,
    max_batches: int | None = None,
    precision: str = "fp32",
    show_bar: bool = True,
) -> list[torch.Tensor]:
    """Each parameter's root-mean-square gradient over the batches of the training
    windows: all of them, as in Krause et al.'s code (``max_batches`` keeps only the
    first ones: a quick look, not the rule's statistics).

    The statistics of Krause et al.'s RMS rule (their MS_g, square-rooted), one tensor
    per parameter in ``model.parameters()`` order: the mean over batches of each batch's
    squared mean-loss gradient. The model is in eval mode, as during dynamic evaluation,
    and left unchanged; each batch's graph is freed before the next.
    """
    mode = Precision.of(precision, model_device(model))
    params = [p for p in model.parameters() if p.requires_grad]
    squares = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    total = -(-len(train) // batch_size)
    total = total if max_batches is None else min(max_batches, total)
    batches = 0
    with evaluating(model), torch.enable_grad():
        scored = scored_batches(
            model, train, batch_size, mode, show_bar, desc="gradient statistics"
        )
        for scores in itertools.islice(scored, total):
            grads = torch.autograd.grad(scores.mean_loss(), params, allow_unused=True)
            for square, grad in zip(squares, grads):
                if grad is not None:
                    square.add_(grad.float() ** 2)
            batches += 1
    if batches == 0:
        raise ValueError("no training batch to collect gradient statistics from")
    return [(square / batches).sqrt() for square in squares]


@dataclass
class DynamicTuning:
    """A grid search of dynamic evaluation's learning rate (and decay) on one split: the
    best point and all."""

    rule: str
    lr: float
    decay: float
    scores: TokenScores  # at the best point, on the split it was tuned on
    # {"lr", "decay", "perplexity"} per point
    grid: list[dict[str, float]] = field(default_factory=list)
    # per hyperparameter; None: a single value
    bracketed: dict[str, bool | None] = field(default_factory=dict)

    @property
    def perplexity(self) -> float:
        return self.scores.perplexity


def bracketed(values: Sequence[float], best: float) -> bool | None:
    """Whether ``best`` lies inside the grid ``values``: grid values on both sides, or
    ``best`` is 0, the bound of both hyperparameters. None when the grid has a single
    value (nothing was tuned)."""
    values = sorted(set(values))
    if len(values) < 2:
        return None
    return best == 0 or values[0] < best < values[-1]


def widened(
    values: Sequence[float], best: float, upper: float = math.inf
) -> float | None:
    """The next grid value beyond the edge ``best`` sits on (a geometric step, as the
    grid's own), or None."""
    values = sorted(set(values))
    if best == values[-1]:
        below = values[-2]
        value = best * (best / below if below > 0 else 3.0)
        return value if value < upper else None
    if best == values[0] and best > 0:
        return best / (values[1] / best)
    return None


def tune_dynamic_evaluation(
    model: nn.Module,
    dataset: LanguageModelingDataset,
    lrs: Sequence[float],
    decays: Sequence[float] = (0.0,),
    rule: str = "sgd",
    rms: Sequence[torch.Tensor] | None = None,
    eps: float = 1e-3,
    precision: str = "fp32",
    show_bar: bool = True,
    max_widenings: int = 4,
) -> DynamicTuning:
    """The learning rate and decay with the lowest perplexity on ``dataset``: pass
    validation windows.

    While the best point lies on an edge of a grid of two or more values, that grid
    grows by one value beyond the edge (at most ``max_widenings`` times in all);
    ``bracketed`` says whether each optimum ended inside its grid.
    """
    if not lrs or not decays:
        raise ValueError("give at least one learning rate and one decay")
    lrs, decays = sorted(set(map(float, lrs))), sorted(set(map(float, decays)))
    results: dict[tuple[float, float], TokenScores] = {}
    for _ in range(max_widenings + 1):
        for lr in lrs:
            for decay in decays:
                if (lr, decay) not in results:
                    results[lr, decay] = dynamic_evaluation(
                        model, dataset, lr, rule, decay, rms, eps, precision, show_bar
                    )
        lr, decay = min(results, key=lambda point: _finite(results[point].perplexity))
        more_lr = widened(lrs, lr) if bracketed(lrs, lr) is False else None
        more_decay = (
            widened(decays, decay, upper=1.0)
            if bracketed(decays, decay) is False
            else None
        )
        if more_lr is None and more_decay is None:
            break
        if more_lr is not None:
            lrs = sorted(lrs + [more_lr])
        if more_decay is not None:
            decays = sorted(decays + [more_decay])
    grid = [
        {"lr": lr_, "decay": d, "perplexity": s.perplexity}
        for (lr_, d), s in sorted(results.items())
    ]
    tried_lrs, tried_decays = {lr_ for lr_, _ in results}, {d for _, d in results}
    return DynamicTuning(
        rule,
        lr,
        decay,
        results[lr, decay],
        grid,
        {"lr": bracketed(tried_lrs, lr), "decay": bracketed(tried_decays, decay)},
    )


def _finite(perplexity: float) -> float:
    return perplexity if math.isfinite(perplexity) else math.inf
