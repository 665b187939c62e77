"""The training loop (chapter 6): where a run stands (:class:`Progress`) and the :class:`Trainer`, whose ``train``
reads top to bottom on one page; its collaborators are handed in (batches, optimizer step, checkpointer,
callbacks), and callbacks see a frozen record of each step.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmtut.callbacks import Callback
from lmtut.checkpoint import (
    CheckpointError,
    RunInfo,
    TrainingCheckpoint,
    checkpoint_path,
    list_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lmtut.config import TrainConfig
from lmtut.datasets import Batch, LanguageModelingDataset, StepBatches
from lmtut.loss import PaddedSmoothedCrossEntropyLoss, needs_distribution
from lmtut.optim import Optimization, TrainingDiverged, WeightAverage
from lmtut.runtime import Precision, barrier, default_device, deferred_interrupts, enable_tf32, world
from lmtut.scoring import evaluate_perplexity

# ----------------------------------------------------------------------------------------------------
# Chapter 6: where a run stands, as one record that checkpoints save and a resumed run continues from.

@dataclass
class Progress:
    """Steps, epochs, tokens and seconds so far (seconds of training steps only: evaluation and checkpoints
    excluded)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    step_in_epoch: int = 0  # steps done in the current epoch
    tokens_seen: int = 0  # input tokens of the steps done, over all ranks
    train_seconds: float = 0.0

    def advance(self, tokens: int, seconds: float, steps_per_epoch: int) -> None:
        """Count one step of ``tokens`` tokens that took ``seconds``; an epoch ends after ``steps_per_epoch``."""
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


# ----------------------------------------------------------------------------------------------------
# Chapter 6: the training loop (NeMo's ``NeuralModuleFactory`` + ``nf.train``).
#
# :meth:`Trainer.train` is the loop; its parts are named: the steps' batches (``lmtut.datasets``), the optimizer step
# (``lmtut.optim``), the run's progress (``lmtut.trainer``) and checkpoints (``lmtut.checkpoint``). Callbacks
# only observe (``lmtut.callbacks``: the progress bar and loss records, the metrics files).

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    """Trains ``model`` on ``train_dataset`` as ``config`` says; evaluates ``eval_datasets`` (``{"valid": ...}``,
    and ``"train"`` for a training slice scored the same way) and writes checkpoints to ``work_dir``."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset: LanguageModelingDataset,
        config: TrainConfig,
        eval_datasets: dict[str, LanguageModelingDataset] | None = None,
        loss_fn: LossFn | None = None,
        callbacks: Sequence[Callback] = (),
        work_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        run: RunInfo | None = None,
    ):
        self.config, self.callbacks, self.run = config, list(callbacks), run
        self.eval_datasets = eval_datasets or {}
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.device = torch.device(device) if device is not None else default_device()
        self.world = world()
        self.model = model.to(self.device)  # the plain module: evaluation, checkpoints, generation
        self.wrapped_model = self._wrap(self.model)  # what the training step calls: DDP and/or compiled
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.loss_fn = loss_fn or PaddedSmoothedCrossEntropyLoss(train_dataset.pad_id, config.label_smoothing)
        self.needs_distribution = needs_distribution(self.loss_fn)  # else the model scores the targets alone
        self.batches = StepBatches(train_dataset, config.batch_size, config.batches_per_step, config.seed,
                                   self.world, config.num_workers, pin_memory=self.device.type == "cuda")
        self.total_steps = config.max_steps or config.num_epochs * self.batches.steps_per_epoch
        self.precision = Precision.of(config.precision, self.device)
        self.tf32 = self.precision.name == "fp32" and enable_tf32(self.device)
        self.optimization = Optimization(self.model, config, self.total_steps, self.precision)
        self.progress = Progress()
        self.sync_every = config.sync_every or (config.log_every if self.device.type == "cuda" else 1)
        self.last_eval: dict[str, dict[str, float]] = {}  # per evaluated dataset: its last record
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # set on device, read when synced

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel under torchrun (gradients all-reduced in buckets during backward), then
        optionally ``torch.compile``."""
        if self.world.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # an adaptive softmax leaves the tail clusters that no target of the batch reached without gradients
            unused = getattr(model, "may_skip_parameters", False)
            model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)
        return torch.compile(model) if self.config.compile else model

    # ------------------------------------------------------------------------------------------- the loop

    def train(self) -> "Trainer":
        """Train until ``total_steps``: each step, its callbacks, and at their intervals an evaluation and a
        checkpoint; at the end a last evaluation and checkpoint. A Ctrl-C takes effect between steps, after the
        step's evaluation and checkpoint, and saves a checkpoint then; ``resume()`` continues from it exactly."""
        self.model.train()
        self.notify("on_train_start")
        try:
            for micro_batches, weights in self.remaining_steps():
                with deferred_interrupts() as ctrl_c:
                    loss = self.train_step(micro_batches, weights)
                    self.notify("on_step_end", loss)
                    if self.due(self.config.eval_every):
                        self.evaluate()
                    if self.due(self.config.checkpoint_every):
                        self.save_checkpoint()
                if ctrl_c:
                    raise KeyboardInterrupt
            with deferred_interrupts() as ctrl_c:
                self.evaluate(unless_done=True)
                self.save_checkpoint(unless_done=True)
                self.notify("on_train_end")
            if ctrl_c:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.save_checkpoint(unless_done=True, collective=self.world.world_size == 1)
            raise
        finally:
            self.notify("on_close")
        return self

    def remaining_steps(self):
        """The steps from the current one to ``total_steps``, epoch after epoch: (micro-batches, loss weights)."""
        while self.progress.step < self.total_steps:
            for step in self.batches.epoch(self.progress.epoch, self.progress.step_in_epoch):
                yield step
                if self.progress.step >= self.total_steps:
                    return

    def due(self, every: int) -> bool:
        """Whether this step is one of ``every``'s, before the last (which always evaluates and saves)."""
        return self.progress.step % every == 0 and self.progress.step < self.total_steps

    def notify(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def log(self, record: dict[str, float]) -> None:
        """Hand a record (``step`` and figures) to every callback's ``on_log``; rank 0 only."""
        if self.world.is_main:
            self.notify("on_log", record)

    # ------------------------------------------------------------------------------------------- one step

    def train_step(self, micro_batches: list[Batch], weights: list[float] | None = None) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches; returns the step's mean loss as a 0-d tensor.

        Each micro-batch's mean loss is multiplied by its weight (``StepBatches.loss_weights``; None: equal weights)
        before ``backward``: gradient accumulation that equals one large batch. In fp32 and bf16 the host waits for
        the device only every ``sync_every`` steps, when the NaN check reads the loss back.
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
            self.check_finite(step)  # before the update: with sync_every=1 the model in memory stays a good one
        self.optimization.step(step)
        if self.average is not None:
            self.average.update(self.model)
        if synced and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the interval's queued GPU work counts as training time
        tokens = sum(batch[0].numel() for batch in micro_batches) * self.world.world_size
        self.progress.advance(tokens, time.perf_counter() - start, self.batches.steps_per_epoch)
        return step_loss

    def backward(self, batch: Batch, weight: float, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch, its mean loss times ``weight``; returns that (detached).
        Under DDP the gradients are all-reduced after the step's ``last`` micro-batch only."""
        input_ids, labels = (t.to(self.device, non_blocking=True) for t in (batch[0], batch[2]))
        sync = contextlib.nullcontext() if last or self.world.world_size == 1 else self.wrapped_model.no_sync()
        with sync:
            with self.precision.autocast():
                # Training windows are padded on the right only, which the causal mask hides: no key mask.
                log_probs = self.wrapped_model(input_ids, targets=None if self.needs_distribution else labels)
                loss = self.loss_fn(log_probs, labels) * weight
            self.optimization.scale(loss).backward()
        return loss.detach()

    def mean_over_ranks(self, loss: torch.Tensor) -> torch.Tensor:
        if self.world.world_size > 1:
            dist.all_reduce(loss)
            loss /= self.world.world_size
        return loss

    def check_finite(self, step: int | None = None) -> None:
        """Read the device-side flag set by the steps since the last check (one sync) and stop if a loss was NaN
        or infinite. With fp16 loss scaling the scaler skips such steps instead, and only a long run of skipped
        steps stops training."""
        if self.optimization.scaler.is_enabled():
            return
        if bool(self._nonfinite):
            raise TrainingDiverged(
                f"the loss became NaN or infinite by step {step or self.step}: training diverged. Lower --lr, "
                "lengthen the warmup or set --clip_grad_norm; resume from the last checkpoint with --resume"
            )

    # ------------------------------------------------------------------------------------------- evaluation

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate and keep: the weights' moving average when ``ema_decay`` is set, else the model."""
        return self.average.model if self.average is not None else self.model

    def evaluate(self, unless_done: bool = False) -> dict[str, dict[str, float]]:
        """Perplexity of ``eval_model`` on every eval dataset (rank 0; the other ranks go on and wait for it at the
        next all-reduce), each logged as ``{step, NAME_nll, NAME_ppl}``. ``unless_done``: not if done at this step."""
        if not self.world.is_main or (unless_done and self._done_at_this_step(self.last_eval)):
            return self.last_eval
        for name, dataset in self.eval_datasets.items():
            nll, ppl = evaluate_perplexity(self.eval_model, dataset, self.config.eval_batch_size)
            self.last_eval[name] = {"step": self.step, f"{name}_nll": nll, f"{name}_ppl": ppl}
            self.log(self.last_eval[name])
        return self.last_eval

    def _done_at_this_step(self, records: dict[str, dict[str, float]]) -> bool:
        return bool(records) and all(r["step"] == self.step for r in records.values())

    # ------------------------------------------------------------------------------------------- checkpoints

    def checkpoint(self, gather_rng: bool = True) -> TrainingCheckpoint:
        """Everything a resume needs. Under torchrun every rank must call it (the RNG states are gathered) unless
        ``gather_rng=False``."""
        trainer = {"progress": self.progress.state_dict(), "optimization": self.optimization.state_dict(),
                   "rng": rng_state(), "train_config": asdict(self.config), "precision": self.precision.name}
        if self.world.world_size > 1 and gather_rng:
            ranks = [None] * self.world.world_size
            dist.all_gather_object(ranks, trainer["rng"])  # each rank's dropout generator
            trainer["rng_ranks"] = ranks
        ema = self.average.state_dict() if self.average is not None else None
        return TrainingCheckpoint(self.model.state_dict(), trainer, ema, self.run)

    def restore(self, checkpoint: TrainingCheckpoint, source: str = "checkpoint") -> None:
        """Continue from ``checkpoint``: weights, average, optimization, progress and random generators."""
        saved = checkpoint.run.model_config if checkpoint.run else None
        if saved is not None and self.run is not None and saved != self.run.model_config:
            raise CheckpointError(f"{source} was made for a different model ({saved}); "
                                  "use the same model arguments or another --work_dir")
        try:
            self.model.load_state_dict(checkpoint.model)
        except RuntimeError as e:
            raise CheckpointError(f"{source} does not fit this model: {str(e).splitlines()[0]}") from None
        if self.average is not None:
            if checkpoint.ema is None:
                raise CheckpointError(f"{source} has no averaged weights (it was written with ema_decay 0); resume "
                                      "it with --ema_decay 0, or start another --work_dir")
            self.average.load_state_dict(checkpoint.ema)
        state = checkpoint.trainer
        self.optimization.load_state_dict(state["optimization"])
        self.progress.load_state_dict(state["progress"])
        ranks = state.get("rng_ranks")
        set_rng_state(ranks[self.world.rank] if ranks and len(ranks) == self.world.world_size else state["rng"])

    def save_checkpoint(self, unless_done: bool = False, collective: bool = True) -> Path | None:
        """Write the state atomically to the work dir (rank 0 only; none without a work dir), keeping the newest
        ``keep_checkpoints``; every rank waits until it is on disk. ``unless_done``: not if saved at this step.
        ``collective=False`` (on Ctrl-C, when other ranks may be gone) saves rank 0's state without talking to them.
        """
        if self.work_dir is None:
            return None
        path = checkpoint_path(self.work_dir, self.step)
        if unless_done and path.is_file():
            return path
        self.check_finite()
        state = self.checkpoint(gather_rng=collective).to_state()
        if self.world.is_main:
            save_checkpoint(state, path, self.config.keep_checkpoints)
        if collective:
            barrier()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint of the work dir; False when there is none."""
        found = list_checkpoints(self.work_dir) if self.work_dir else []
        if not found:
            return False
        self.restore(TrainingCheckpoint.read(found[-1], self.device), str(found[-1]))
        return True

    # ------------------------------------------------------------------------------------------- shortcuts

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def tokens_seen(self) -> int:
        return self.progress.tokens_seen

    @property
    def train_seconds(self) -> float:
        return self.progress.train_seconds

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    @property
    def skipped_steps(self) -> int:
        return self.optimization.skipped_steps

    @property
    def lr(self) -> float:
        return self.optimization.lr

    @property
    def loss_scale(self) -> float | None:
        return self.optimization.loss_scale
