"""Chapter 6: the training loop (the seed's ``NeuralModuleFactory`` + ``nf.train``), small and readable.

``Trainer(model, train_dataset, config, loss_fn, callbacks, work_dir).train(resume=...)`` runs optimizer steps of
``batches_per_step`` micro-batches each (gradient accumulation, weighted by each micro-batch's token count, so that
it equals one large batch), clips gradients, follows an LR policy whose length is the run's length, stops on a NaN
or infinite loss, and can resume from its last checkpoint exactly where it stopped: model, optimizer, scheduler,
random generators and the position in the shuffled data are all saved.

Chapter 9 adds ``precision`` (fp32, amp-fp16 with a ``GradScaler``, amp-bf16; see ``lmtut.precision``). Chapter 10
adds data parallelism: launched by ``torchrun``, each rank takes its share of every micro-batch, the model is
wrapped in ``DistributedDataParallel``, gradients are all-reduced once per optimizer step (``no_sync`` during
accumulation), and only rank 0 logs, evaluates and writes checkpoints. The global batch, and so the losses and the
LR schedule, are the same for any number of ranks.

Chapter 7 adds weight averaging (``ema_decay``, ``lmtut.ema``): after every step the Trainer folds the weights into
an exponential moving average, and ``trainer.eval_model`` (what the evaluators and the final evaluation use) is the
averaged copy; checkpoints keep both, so that a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmtut.callbacks import Callback
from lmtut.checkpoint import (CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint, rng_state,
                              save_checkpoint, set_rng_state)
from lmtut.datasets import LanguageModelingDataLayer, LanguageModelingDataset
from lmtut.device import default_device
from lmtut.ema import WeightAverage
from lmtut.interrupts import deferred_interrupts
from lmtut.distributed import barrier, world
from lmtut.loss import PaddedSmoothedCrossEntropyLoss, targets_suffice
from lmtut.lr_policies import ALIASES as LR_POLICIES
from lmtut.lr_policies import build_scheduler, get_lr_policy
from lmtut.optimizers import OPTIMIZERS, get_optimizer, parameter_groups
from lmtut.precision import Precision, enable_tf32


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """The optimization and the training loop's schedule, under one name each (the seed's names are aliases on
    the command line: see ``lmtut.recipes.SEED_ALIASES``)."""

    batch_size: int = 32  # windows per micro-batch, over all ranks
    batches_per_step: int = 1  # micro-batches per optimizer step: gradient accumulation (the seed's iter_per_step)
    num_epochs: int = 1  # passes over the training windows (unless max_steps is set)
    max_steps: int | None = None  # overrides num_epochs
    optimizer_kind: str = "adamw"  # adam, adamw, sgd or novograd
    lr: float = 1e-3  # peak learning rate, after the warmup
    weight_decay: float = 0.0  # decoupled (AdamW); never on biases, LayerNorm weights or positions
    beta1: float = 0.9  # Adam's first-moment decay (SGD: momentum)
    beta2: float = 0.999  # Adam's second-moment decay
    lr_policy: str = "cosine"  # constant, cosine, linear or inverse_sqrt
    warmup_ratio: float = 0.05  # linear warmup over this share of the steps (the seed's lr_warmup_proportion)
    warmup_steps: int | None = None  # or over this many steps (overrides warmup_ratio)
    min_lr_ratio: float = 0.0  # where the decay ends, as a share of lr
    clip_grad_norm: float | None = 1.0  # None or 0: no clipping
    label_smoothing: float = 0.0  # eps of the smoothed training loss (Chapter 5); perplexity is never smoothed
    seed: int = 0  # seeds the weights, dropout and the data order
    num_workers: int = 0  # DataLoader worker processes
    precision: str = "fp32"  # fp32 | amp-fp16 | amp-bf16 | auto | O0 | O1 | O2 (chapter 9)
    sync_every: int | None = None  # read the loss back every N steps (None: log_every on a GPU, 1 on a CPU)
    max_skipped_steps: int = 20  # fp16: stop after this many consecutive steps skipped for overflow
    compile: bool = False  # torch.compile the model (chapter 11)
    log_every: int = 25  # steps between loss records
    eval_every: int = 500  # steps between validations (and one at the end)
    eval_batch_size: int = 32  # windows per evaluation batch
    train_eval_tokens: int = 0  # at each validation also score this many training tokens, as train_ppl (0: off)
    ema_decay: float = 0.0  # keep an exponential moving average of the weights, evaluated and saved (0: off)
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # the newest checkpoints kept

    def __post_init__(self) -> None:
        positive = ["batch_size", "batches_per_step", "num_epochs", "log_every", "eval_every", "eval_batch_size",
                    "checkpoint_every", "keep_checkpoints", "max_skipped_steps"]
        positive += [name for name in ("max_steps", "sync_every", "warmup_steps") if getattr(self, name) is not None]
        for name in positive:
            if getattr(self, name) < (0 if name == "warmup_steps" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (0: no averaging), got {self.ema_decay}")
        if self.train_eval_tokens < 0:
            raise ValueError(f"train_eval_tokens must be 0 (off) or more, got {self.train_eval_tokens}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        if self.optimizer_kind.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer_kind {self.optimizer_kind!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_policy.lower() not in LR_POLICIES:
            raise ValueError(f"unknown lr_policy {self.lr_policy!r}; choose one of constant, cosine, linear, "
                             "inverse_sqrt")


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        train_dataset: LanguageModelingDataset,
        config: TrainConfig,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        callbacks: Sequence[Callback] = (),
        work_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        extra_state: dict[str, Any] | None = None,
    ):
        self.config, self.dataset, self.callbacks = config, train_dataset, list(callbacks)
        self.device = torch.device(device) if device is not None else default_device()
        self.world = world()
        self.model = model.to(self.device)  # the plain module: evaluation, checkpoints, generation
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.loss_fn = loss_fn or PaddedSmoothedCrossEntropyLoss(train_dataset.pad_id, config.label_smoothing)
        self.targets_only = targets_suffice(self.loss_fn)  # then the model scores the targets alone
        self.label_counts = train_dataset.label_counts()  # scored labels per window: the micro-batches' weights
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.extra_state = extra_state or {}  # saved in checkpoints as is (the run's config, the vocabulary)
        if config.batch_size % self.world.world_size:
            raise ValueError(f"batch_size {config.batch_size} (the global batch) must divide among "
                             f"{self.world.world_size} ranks")
        self.rank_batch_size = config.batch_size // self.world.world_size
        self.window_per_step = config.batch_size * config.batches_per_step
        self.steps_per_epoch = len(train_dataset) // self.window_per_step
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(train_dataset)} training windows are fewer than one step's {self.window_per_step}")
        self.total_steps = config.max_steps or config.num_epochs * self.steps_per_epoch
        self.sync_every = config.sync_every or (config.log_every if self.device.type == "cuda" else 1)
        self.precision = Precision.of(config.precision, self.device)
        self.tf32 = self.precision.name == "fp32" and enable_tf32(self.device)
        self.scaler = self.precision.grad_scaler()
        self.skipped_steps = self._skipped_in_a_row = 0
        self.train_model = self._wrap(self.model)  # what the training step calls
        groups = parameter_groups(self.model, config.weight_decay)
        self.optimizer = get_optimizer(config.optimizer_kind, groups, config.lr, config.weight_decay,
                                       (config.beta1, config.beta2), fused=self.device.type == "cuda")
        warmup = dict(warmup_steps=config.warmup_steps) if config.warmup_steps is not None else dict(
            warmup_ratio=config.warmup_ratio)
        policy = get_lr_policy(config.lr_policy, self.total_steps, min_lr_ratio=config.min_lr_ratio, **warmup)
        self.scheduler = build_scheduler(self.optimizer, policy)
        self.step = self.epoch = self.step_in_epoch = self.tokens_seen = 0
        self.train_seconds = 0.0  # time in train_step only (evaluation and checkpoints excluded)
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

    # ------------------------------------------------------------------------------------------- state

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate and keep: the weights' moving average when ``ema_decay`` is set, else the model."""
        return self.average.model if self.average is not None else self.model

    @property
    def loss_scale(self) -> float | None:
        """fp16's current loss scale (None when no scaler is used)."""
        return self.scaler.get_scale() if self.scaler.is_enabled() else None

    def state_dict(self, gather_rng: bool = True) -> dict[str, Any]:
        """Everything a resume needs. Under torchrun every rank must call it (the RNG states are gathered) unless
        ``gather_rng=False``."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "progress": {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                         "skipped_steps": self.skipped_steps},
            "train_config": asdict(self.config),
            "precision": self.precision.name,
            **self.extra_state,
        }
        if self.average is not None:
            state["ema"] = self.average.state_dict()
        if self.world.world_size > 1 and gather_rng:
            ranks = [None] * self.world.world_size
            dist.all_gather_object(ranks, state["rng"])  # each rank's dropout generator
            state["rng_ranks"] = ranks
        return state

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        for key in ("model", "optimizer", "scheduler", "rng", "progress"):
            if key not in state:
                raise CheckpointError(f"{source} lacks '{key}': not an lmtut training checkpoint")
        saved_model = state.get("model_config")
        if saved_model is not None and saved_model != self.extra_state.get("model_config", saved_model):
            raise CheckpointError(f"{source} was made for a different model ({saved_model}); "
                                  "use the same model arguments or another --work_dir")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{source} does not fit this model: {str(e).splitlines()[0]}") from None
        self._load_average(state, source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks")
        set_rng_state(ranks[self.world.rank] if ranks and len(ranks) == self.world.world_size else state["rng"])
        for key, value in state["progress"].items():
            setattr(self, key, value)

    def _load_average(self, state: dict[str, Any], source: str) -> None:
        """The averaged weights of a checkpoint, when this run averages (a run without averaging ignores them)."""
        if self.average is None:
            return
        if "ema" not in state:
            raise CheckpointError(f"{source} has no averaged weights (it was written with ema_decay 0); resume it "
                                  "with --ema_decay 0, or start another --work_dir")
        self.average.load_state_dict(state["ema"])

    def save_checkpoint(self, keep: int | None = None, collective: bool = True) -> Path | None:
        """Write the state atomically (rank 0 only); every rank waits until it is on disk.

        ``collective=False`` (on Ctrl-C, when other ranks may be gone) saves rank 0's state without talking to them.
        """
        self.check_finite()
        state = self.state_dict(gather_rng=collective)
        path = checkpoint_path(self.work_dir, self.step)
        if self.world.is_main:
            save_checkpoint(state, path, keep)
        if collective:
            barrier()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint of the work dir; False when there is none."""
        found = list_checkpoints(self.work_dir) if self.work_dir else []
        if not found:
            return False
        self.load_state_dict(load_checkpoint(found[-1], self.device), str(found[-1]))
        return True

    # ------------------------------------------------------------------------------------------- logging

    def log(self, record: dict[str, float]) -> None:
        """Hand a record (``step`` and figures) to every callback's ``on_log``; rank 0 only."""
        if self.world.is_main:
            for cb in self.callbacks:
                cb.on_log(self, record)

    # ------------------------------------------------------------------------------------------- training

    def _epoch_steps(self):
        """This epoch's steps from the current one on: (this rank's micro-batches, their loss weights).

        The order is a per-epoch seeded permutation, the same on every rank; each global micro-batch of
        ``batch_size`` windows is cut into ``world_size`` consecutive shares and rank r takes share r.
        """
        generator = torch.Generator().manual_seed(self.config.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)
        start, stop = self.step_in_epoch * self.window_per_step, self.steps_per_epoch * self.window_per_step
        shares = order[start:stop].view(-1, self.world.world_size, self.rank_batch_size)  # (micro-batch, rank, window)
        mine = shares[:, self.world.rank].reshape(-1).tolist()
        # The loader gets its own generator: creating an iterator draws a seed, which must not come from the global
        # generator that dropout uses, or a resumed run would draw different dropout masks.
        batches = iter(LanguageModelingDataLayer(self.dataset, self.rank_batch_size, sampler=mine,
                                                 num_workers=self.config.num_workers, generator=generator,
                                                 pin_memory=self.device.type == "cuda"))
        m = self.config.batches_per_step
        for step_shares in shares.view(-1, m, self.world.world_size, self.rank_batch_size):
            yield [next(batches) for _ in range(m)], self.loss_weights(step_shares)

    def loss_weights(self, step_shares: torch.Tensor) -> list[float]:
        """Each of this rank's micro-batches' share of the step's scored labels (all ranks), times the world size.

        ``step_shares``: the step's window indices, (micro-batch, rank, window). DDP averages gradients over ranks,
        so with these weights the gradient is exactly that of the whole step's mean loss over its labels.
        """
        counts = self.label_counts[step_shares]  # (micro-batch, rank, window)
        total = max(int(counts.sum()), 1)
        n = self.world.world_size
        return [int(c) * n / total for c in counts[:, self.world.rank].sum(-1)]

    def train_step(self, micro_batches: list[tuple[torch.Tensor, ...]],
                   weights: list[float] | None = None) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches; returns the step's mean loss as a 0-d tensor.

        Each micro-batch's mean loss is multiplied by its weight (:meth:`loss_weights`; None: equal weights) before
        ``backward``: gradient accumulation that equals one large batch. In fp32 and bf16 the host waits for the
        device only every ``sync_every`` steps, when the NaN check reads the loss back (fp16's scaler syncs every step).
        """
        start = time.perf_counter()
        n = self.world.world_size
        weights = weights or [1.0 / len(micro_batches)] * len(micro_batches)
        step_loss = torch.zeros((), device=self.device)
        for i, ((input_ids, _, labels), weight) in enumerate(zip(micro_batches, weights)):
            input_ids = input_ids.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            last = i == len(micro_batches) - 1
            # all-reduce gradients only after the last micro-batch of the step
            sync = contextlib.nullcontext() if last or n == 1 else self.train_model.no_sync()
            with sync:
                with self.precision.autocast():
                    # Training windows are padded on the right only, which the causal mask hides: no key mask.
                    log_probs = self.train_model(input_ids, targets=labels if self.targets_only else None)
                    loss = self.loss_fn(log_probs, labels) * weight
                self.scaler.scale(loss).backward()
            step_loss += loss.detach()
            self.tokens_seen += input_ids.numel() * n
        if n > 1:
            dist.all_reduce(step_loss)
            step_loss /= n
        self._nonfinite |= ~torch.isfinite(step_loss)
        step = self.step + 1
        synced = step % self.sync_every == 0 or step == self.total_steps
        if synced:
            self.check_finite(step)  # before the update: with sync_every=1 the model in memory stays a good one
        self._optimizer_step()
        if synced and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the interval's queued GPU work counts as training time
        self.train_seconds += time.perf_counter() - start
        return step_loss

    def _optimizer_step(self) -> None:
        """Clip, step (fp16: unscale first; the scaler skips a step whose gradients overflowed), schedule."""
        if self.config.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale  # the scale drops only after an overflow
            self.skipped_steps += skipped
            self._skipped_in_a_row = self._skipped_in_a_row + 1 if skipped else 0
            if self._skipped_in_a_row >= self.config.max_skipped_steps:
                raise TrainingDiverged(
                    f"fp16 loss scaling skipped {self._skipped_in_a_row} steps in a row (scale now "
                    f"{self.scaler.get_scale():g}) at step {self.step + 1}: the gradients are not finite at any "
                    "scale. Try --precision amp-bf16 or fp32, a lower --lr, or resume from the last checkpoint"
                )
            if skipped:  # the schedule counts every step, skipped or not, so that it still ends with the run
                with warnings.catch_warnings():  # PyTorch warns that the optimizer did not step: we know
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                return
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def check_finite(self, step: int | None = None) -> None:
        """Read the device-side flag set by the steps since the last check (one sync) and stop if a loss was NaN
        or infinite. With fp16 loss scaling the scaler skips such steps instead, and only a long run of skipped
        steps stops training."""
        if self.scaler.is_enabled():
            return
        if bool(self._nonfinite):
            raise TrainingDiverged(
                f"the loss became NaN or infinite by step {step or self.step}: training diverged. Lower --lr, "
                "lengthen the warmup or set --clip_grad_norm; resume from the last checkpoint with --resume"
            )

    def train(self, resume: bool = False) -> "Trainer":
        if resume:
            self.resume()
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            while self.step < self.total_steps:
                steps = self._epoch_steps()
                for _ in range(self.step_in_epoch, self.steps_per_epoch):
                    if self.step >= self.total_steps:
                        break
                    with deferred_interrupts() as ctrl_c:  # a Ctrl-C now takes effect after the step: whole steps
                        loss = self.train_step(*next(steps))
                        if self.average is not None:
                            self.average.update(self.model)
                        self.step += 1
                        self.step_in_epoch += 1
                        if self.step_in_epoch == self.steps_per_epoch:
                            self.epoch, self.step_in_epoch = self.epoch + 1, 0
                    for cb in self.callbacks:
                        cb.on_step_end(self, loss)
                    if ctrl_c:
                        raise KeyboardInterrupt
            for cb in self.callbacks:
                cb.on_train_end(self)
        except KeyboardInterrupt:
            for cb in self.callbacks:
                cb.on_interrupt(self)
            raise
        finally:
            for cb in self.callbacks:
                cb.on_close(self)
        return self
