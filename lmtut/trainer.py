"""The training loop (chapter 6): where a run stands (:class:`Progress`) and the
:class:`Trainer`, whose ``train`` reads top to bottom on one page; its collaborators are
handed in (batches, optimizer step, checkpointer, callbacks), and callbacks see a frozen
record of each step.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmtut.callbacks import Callback, StepRecord, StopTraining
from lmtut.checkpoint import Checkpointer, RunInfo
from lmtut.config import TrainConfig
from lmtut.datasets import Batch, LanguageModelingDataset, StepBatches
from lmtut.loss import PaddedSmoothedCrossEntropyLoss
from lmtut.model import TransformerLM
from lmtut.optim import Optimization, TrainingDiverged, WeightAverage
from lmtut.runtime import (
    Precision,
    default_device,
    deferred_interrupts,
    enable_tf32,
    world,
)
from lmtut.scoring import evaluate_perplexity

# --------------------------------------------------------------------------------------
# Chapter 6: where a run stands, as one record that checkpoints save and a resumed run
# continues from.


@dataclass
class Progress:
    """Steps, epochs, tokens and seconds so far (seconds of training steps only:
    evaluation and checkpoints excluded)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    step_in_epoch: int = 0  # steps done in the current epoch
    tokens_seen: int = 0  # input tokens of the steps done, over all ranks
    train_seconds: float = 0.0

    def advance(self, tokens: int, seconds: float, steps_per_epoch: int) -> None:
        """Count one step of ``tokens`` tokens that took ``seconds``; an epoch ends
        after ``steps_per_epoch``."""
        self.step += 1
        self.step_in_epoch += 1
        self.tokens_seen += tokens
        self.train_seconds += seconds
        if self.step_in_epoch == steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)


# --------------------------------------------------------------------------------------
# Chapter 6: the training loop (NeMo's ``NeuralModuleFactory`` + ``nf.train``).
#
# :meth:`Trainer.train` is the loop. Its collaborators are named and handed what they
# need: the steps' batches (``lmtut.datasets.StepBatches``), the optimizer step
# (``lmtut.optim.Optimization``), the run's progress (:class:`Progress`), the
# checkpointer (``lmtut.checkpoint.Checkpointer``, given the stateful parts) and the
# callbacks (``lmtut.callbacks``), which see a frozen record of each step and never the
# Trainer.


@dataclass(frozen=True)
class TrainResult:
    """What :meth:`Trainer.train` returns: how far the run got and what its last
    evaluations measured."""

    steps: int
    tokens_seen: int
    train_seconds: float  # of training steps only
    skipped_steps: int  # steps that fp16's scaler skipped
    # per evaluated dataset, its last record ({step, NAME_nll, NAME_ppl})
    evaluations: dict[str, dict[str, float]]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / max(self.train_seconds, 1e-9)


class Trainer:
    """Trains ``model`` on ``train_dataset`` as ``config`` says; evaluates
    ``eval_datasets`` (``{"valid": ...}``, and ``"train"`` for a training slice scored
    the same way) and writes checkpoints to ``work_dir``."""

    def __init__(
        self,
        model: TransformerLM,
        train_dataset: LanguageModelingDataset,
        config: TrainConfig,
        eval_datasets: dict[str, LanguageModelingDataset] | None = None,
        loss_fn: PaddedSmoothedCrossEntropyLoss | None = None,
        callbacks: Sequence[Callback] = (),
        work_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        run_info: RunInfo | None = None,
    ):
        self.config, self.callbacks = config, list(callbacks)
        self.eval_datasets = eval_datasets or {}
        self.device = torch.device(device) if device is not None else default_device()
        self.world = world()
        # the plain module: evaluation, checkpoints, generation
        self.model = model.to(self.device)
        # what the training step calls: DDP and/or compiled
        self.wrapped_model = self._wrap(self.model)
        self.average = (
            WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        )
        self.loss_fn = loss_fn or PaddedSmoothedCrossEntropyLoss(
            train_dataset.pad_id, config.label_smoothing
        )
        self.batches = StepBatches(
            train_dataset,
            config.batch_size,
            config.batches_per_step,
            config.seed,
            self.world,
            config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.total_steps = (
            config.max_steps or config.num_epochs * self.batches.steps_per_epoch
        )
        self.precision = Precision.of(config.precision, self.device)
        self.tf32 = self.precision.name == "fp32" and enable_tf32(self.device)
        self.optimization = Optimization(
            self.model, config, self.total_steps, self.precision
        )
        self.progress = Progress()
        parts = {"progress": self.progress, "optimization": self.optimization}
        parts |= {"average": self.average} if self.average is not None else {}
        self.checkpointer = Checkpointer(
            Path(work_dir) if work_dir is not None else None,
            self.model,
            parts,
            config.keep_checkpoints,
            self.world,
            run_info,
            extra={"train_config": asdict(config), "precision": self.precision.name},
        )
        self.sync_every = config.sync_every or (
            config.log_every if self.device.type == "cuda" else 1
        )
        # per evaluated dataset: its last record
        self.last_eval: dict[str, dict[str, float]] = {}
        self.stop_requested = False  # a callback raised StopTraining
        # set on device, read when synced
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

    def _wrap(self, model: TransformerLM) -> nn.Module:
        """DistributedDataParallel under torchrun (gradients all-reduced in buckets
        during backward), then optionally ``torch.compile``."""
        if self.world.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # an adaptive softmax leaves the tail clusters that no target of the batch
            # reached without gradients
            unused = model.may_skip_parameters
            model = DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=unused
            )
        return torch.compile(model) if self.config.compile else model

    # ------------------------------------------------------------------------- the loop

    def train(self) -> TrainResult:
        """Train until ``total_steps``: each step, its callbacks, and at their intervals
        an evaluation and a checkpoint; at the end a last evaluation and checkpoint. A
        Ctrl-C takes effect between steps, after the step's evaluation and checkpoint,
        and saves a checkpoint then; ``resume()`` continues from it as if uninterrupted
        (the tests compare the losses)."""
        self.model.train()
        self.notify("on_train_start", self.record())
        try:
            for micro_batches, weights in self.remaining_steps():
                with deferred_interrupts() as ctrl_c:
                    loss = self.train_step(micro_batches, weights)
                    self.notify("on_step_end", self.record(loss))
                    if self.is_step_of(self.config.eval_every):
                        self.evaluate()
                    if self.is_step_of(self.config.checkpoint_every):
                        self.save_checkpoint()
                if ctrl_c:
                    raise KeyboardInterrupt
                if self.stop_requested:
                    break
            with deferred_interrupts() as ctrl_c:
                self.evaluate(unless_done=True)
                self.save_checkpoint(unless_done=True)
                self.notify("on_train_end", self.record())
            if ctrl_c:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.save_checkpoint(
                unless_done=True, collective=self.world.world_size == 1
            )
            raise
        finally:
            self.notify("on_close")
        return self.result()

    def remaining_steps(self) -> Iterator[tuple[list[Batch], list[float]]]:
        """The steps from the current one to ``total_steps``, epoch after epoch:
        (micro-batches, loss weights)."""
        while self.progress.step < self.total_steps:
            for step in self.batches.epoch(
                self.progress.epoch, self.progress.step_in_epoch
            ):
                yield step
                if self.progress.step >= self.total_steps:
                    return

    def is_step_of(self, every: int) -> bool:
        """Whether this step is one of ``every``'s, before the last (which always
        evaluates and saves)."""
        return self.progress.step % every == 0 and self.progress.step < self.total_steps

    def record(self, loss: torch.Tensor | None = None) -> StepRecord:
        """Where training stands, for the callbacks."""
        p, o = self.progress, self.optimization
        return StepRecord(
            p.step,
            self.total_steps,
            o.lr,
            p.tokens_seen,
            p.train_seconds,
            self.world.is_main,
            loss,
            o.loss_scale,
            o.skipped_steps,
        )

    def notify(self, event: str, *args) -> None:
        """Call every callback's ``event``; what ``on_step_end`` returns is logged. A
        callback that raises :class:`StopTraining` ends the loop after this step."""
        for cb in self.callbacks:
            try:
                logged = getattr(cb, event)(*args)
            except StopTraining:
                self.stop_requested, logged = True, None
            if event == "on_step_end" and logged is not None:
                self.log(logged)

    def log(self, record: dict[str, float]) -> None:
        """Hand a record (``step`` and figures) to every callback's ``on_log``; rank 0
        only."""
        if self.world.is_main:
            self.notify("on_log", record)

    def result(self) -> TrainResult:
        p = self.progress
        return TrainResult(
            p.step,
            p.tokens_seen,
            p.train_seconds,
            self.optimization.skipped_steps,
            dict(self.last_eval),
        )

    # ------------------------------------------------------------------------- one step

    def train_step(
        self, micro_batches: list[Batch], weights: list[float] | None = None
    ) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches; returns the step's mean
        loss as a 0-d tensor.

        Each micro-batch's mean loss is multiplied by its weight
        (``StepBatches.loss_weights``; None: equal weights) before ``backward``:
        gradient accumulation that equals one large batch. In fp32 and bf16 the host
        waits for the device only every ``sync_every`` steps, when the NaN check reads
        the loss back.
        """
        start = time.perf_counter()
        weights = weights or [1.0 / len(micro_batches)] * len(micro_batches)
        step_loss = torch.zeros((), device=self.device)
        for i, (batch, weight) in enumerate(zip(micro_batches, weights)):
            step_loss += self.backward(batch, weight, last=i == len(micro_batches) - 1)
        step_loss = self.mean_over_ranks(step_loss)
        self._nonfinite |= ~torch.isfinite(step_loss)
        step = self.progress.step + 1
        synced = step % self.sync_every == 0 or step == self.total_steps
        if synced:
            # before the update: with sync_every=1 the model in memory stays a good one
            self.check_finite(step)
        self.optimization.step(step)
        if self.average is not None:
            self.average.update(self.model)
        if synced and self.device.type == "cuda":
            # the interval's queued GPU work counts as training time
            torch.cuda.synchronize(self.device)
        tokens = (
            sum(batch[0].numel() for batch in micro_batches) * self.world.world_size
        )
        self.progress.advance(
            tokens, time.perf_counter() - start, self.batches.steps_per_epoch
        )
        return step_loss

    def backward(self, batch: Batch, weight: float, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch, its mean loss times ``weight``;
        returns that (detached). Under DDP the gradients are all-reduced after the
        step's ``last`` micro-batch only."""
        input_ids, labels = (
            t.to(self.device, non_blocking=True) for t in (batch[0], batch[2])
        )
        sync = (
            contextlib.nullcontext()
            if last or self.world.world_size == 1
            else self.wrapped_model.no_sync()
        )
        with sync:
            with self.precision.autocast():
                # Training windows are padded on the right only, which the causal mask
                # hides: no key mask.
                output = self.wrapped_model(
                    input_ids, labels, distribution=self.loss_fn.needs_distribution
                )
                loss = self.loss_fn.of_output(output, labels) * weight
            self.optimization.scale(loss).backward()
        return loss.detach()

    def mean_over_ranks(self, loss: torch.Tensor) -> torch.Tensor:
        if self.world.world_size > 1:
            dist.all_reduce(loss)
            loss /= self.world.world_size
        return loss

    def check_finite(self, step: int | None = None) -> None:
        """Read the device-side flag set by the steps since the last check (one sync)
        and stop if a loss was NaN or infinite. With fp16 loss scaling the scaler skips
        such steps instead, and only a long run of skipped steps stops training."""
        if self.optimization.scaler.is_enabled():
            return
        if bool(self._nonfinite):
            raise TrainingDiverged(
                f"the loss became NaN or infinite by step "
                f"{step or self.progress.step}: training diverged. Lower --lr, "
                "lengthen the warmup or set --clip_grad_norm; resume from the last "
                "checkpoint with --resume"
            )

    # ----------------------------------------------------------------------- evaluation

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate and keep: the weights' moving average when
        ``ema_decay`` is set, else the model."""
        return self.average.model if self.average is not None else self.model

    def evaluate(self, unless_done: bool = False) -> dict[str, dict[str, float]]:
        """Perplexity of ``eval_model`` on every eval dataset (rank 0; the other ranks
        go on and wait for it at the next all-reduce), each logged as ``{step, NAME_nll,
        NAME_ppl}``. ``unless_done``: not if done at this step."""
        if not self.world.is_main or (unless_done and self._evaluated_at_this_step()):
            return self.last_eval
        for name, dataset in self.eval_datasets.items():
            nll, ppl = evaluate_perplexity(
                self.eval_model, dataset, self.config.eval_batch_size
            )
            self.last_eval[name] = {
                "step": self.progress.step,
                f"{name}_nll": nll,
                f"{name}_ppl": ppl,
            }
            self.log(self.last_eval[name])
        return self.last_eval

    def _evaluated_at_this_step(self) -> bool:
        records = self.last_eval.values()
        return bool(records) and all(r["step"] == self.progress.step for r in records)

    # ---------------------------------------------------------------------- checkpoints

    def save_checkpoint(
        self, unless_done: bool = False, collective: bool = True
    ) -> Path | None:
        """The checkpointer saves this step's state (after a check that the model in
        memory is a good one)."""
        if self.checkpointer.work_dir is not None:
            self.check_finite()
        return self.checkpointer.save(self.progress.step, unless_done, collective)

    def resume(self) -> bool:
        """Continue from the newest checkpoint of the work dir; False when there is
        none."""
        return self.checkpointer.resume(self.device)
