"""Chapter 6: the training loop (the seed's ``NeuralModuleFactory`` + ``nf.train``), small and readable.

``Trainer(model, train_dataset, config, loss_fn, callbacks, work_dir).train(resume=...)`` runs optimizer steps of
``batches_per_step`` micro-batches each (gradient accumulation, weighted by each micro-batch's token count, so that
it equals one large batch), clips gradients, follows an LR policy whose length is the run's length, stops on a NaN
or infinite loss, and can resume from its last checkpoint exactly where it stopped: model, optimizer, scheduler,
random generators and the position in the shuffled data are all saved.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lmtut.callbacks import Callback
from lmtut.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, rng_state, set_rng_state
from lmtut.datasets import LanguageModelingDataLayer, LanguageModelingDataset
from lmtut.loss import PaddedSmoothedCrossEntropyLoss
from lmtut.lr_policies import build_scheduler, get_lr_policy
from lmtut.optimizers import get_optimizer, parameter_groups


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """The optimization knobs, under the seed's names."""

    batch_size: int = 32
    batches_per_step: int = 1  # the seed's iter_per_step: gradient accumulation
    num_epochs: int = 1
    max_steps: int | None = None  # overrides num_epochs
    optimizer_kind: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    lr_policy: str = "cosine"
    lr_warmup_proportion: float = 0.05
    min_lr_ratio: float = 0.0
    clip_grad_norm: float | None = 1.0
    seed: int = 0
    num_workers: int = 0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        self.model = model.to(self.device)
        self.loss_fn = loss_fn or PaddedSmoothedCrossEntropyLoss(train_dataset.tokenizer.pad_id)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.extra_state = extra_state or {}  # saved in checkpoints as is (the run's config, the vocabulary)
        self.window_per_step = config.batch_size * config.batches_per_step
        self.steps_per_epoch = len(train_dataset) // self.window_per_step
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(train_dataset)} training windows are fewer than one step's {self.window_per_step}")
        self.total_steps = config.max_steps or config.num_epochs * self.steps_per_epoch
        groups = parameter_groups(self.model, config.weight_decay)
        self.optimizer = get_optimizer(config.optimizer_kind, groups, config.lr, config.weight_decay,
                                       (config.beta1, config.beta2))
        policy = get_lr_policy(config.lr_policy, self.total_steps, warmup_ratio=config.lr_warmup_proportion,
                               min_lr_ratio=config.min_lr_ratio)
        self.scheduler = build_scheduler(self.optimizer, policy)
        self.step = self.epoch = self.step_in_epoch = self.tokens_seen = 0
        self.train_seconds = 0.0  # time in train_step only (evaluation and checkpoints excluded)
        self._writer = None

    # ------------------------------------------------------------------------------------------- state

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "progress": {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds},
            "train_config": asdict(self.config),
            **self.extra_state,
        }

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
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        for key, value in state["progress"].items():
            setattr(self, key, value)

    def resume(self) -> bool:
        """Load the newest checkpoint of the work dir; False when there is none."""
        found = list_checkpoints(self.work_dir) if self.work_dir else []
        if not found:
            return False
        self.load_state_dict(load_checkpoint(found[-1], self.device), str(found[-1]))
        self._truncate_metrics()
        return True

    # ------------------------------------------------------------------------------------------- logging

    def log(self, record: dict[str, float]) -> None:
        """Append a record to ``metrics.jsonl`` and TensorBoard (nothing without a work dir)."""
        if self.work_dir is None:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        for key, value in record.items():
            if key != "step":
                self._writer.add_scalar(key, value, record["step"])

    def _truncate_metrics(self) -> None:
        """After a resume, drop the records logged after the checkpoint (they will be logged again)."""
        path = self.work_dir / "metrics.jsonl"
        if path.is_file():
            keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            path.write_text("".join(line + "\n" for line in keep))

    # ------------------------------------------------------------------------------------------- training

    def _epoch_batches(self):
        """The micro-batches of the current epoch from the current step on, in a per-epoch seeded order."""
        generator = torch.Generator().manual_seed(self.config.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)
        start, stop = self.step_in_epoch * self.window_per_step, self.steps_per_epoch * self.window_per_step
        # The loader gets its own generator: creating an iterator draws a seed, which must not come from the global
        # generator that dropout uses, or a resumed run would draw different dropout masks.
        return iter(LanguageModelingDataLayer(self.dataset, self.config.batch_size, sampler=order[start:stop].tolist(),
                                              num_workers=self.config.num_workers, generator=generator,
                                              pin_memory=self.device.type == "cuda"))

    def train_step(self, micro_batches: list[tuple[torch.Tensor, ...]]) -> float:
        """One optimizer step over ``batches_per_step`` micro-batches; returns the step's loss."""
        start = time.perf_counter()
        pad = self.dataset.tokenizer.pad_id
        counts = [int((labels != pad).sum()) for _, _, labels in micro_batches]
        total = max(sum(counts), 1)
        step_loss = 0.0
        for (input_ids, _, labels), count in zip(micro_batches, counts):
            input_ids = input_ids.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            # Training windows are padded on the right only, which the causal mask already hides: no key mask.
            loss = self.loss_fn(self.model(input_ids), labels) * (count / total)
            loss.backward()
            step_loss += loss.item()
            self.tokens_seen += input_ids.numel()
        if not math.isfinite(step_loss):
            raise TrainingDiverged(
                f"loss is {step_loss} at step {self.step + 1}: training diverged. Lower --lr, lengthen the warmup "
                "or set --clip_grad_norm; resume from the last checkpoint with --resume"
            )
        if self.config.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.train_seconds += time.perf_counter() - start
        return step_loss

    def train(self, resume: bool = False) -> "Trainer":
        if resume:
            self.resume()
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            while self.step < self.total_steps:
                batches = self._epoch_batches()
                for _ in range(self.step_in_epoch, self.steps_per_epoch):
                    if self.step >= self.total_steps:
                        break
                    loss = self.train_step([next(batches) for _ in range(self.config.batches_per_step)])
                    self.step += 1
                    self.step_in_epoch += 1
                    if self.step_in_epoch == self.steps_per_epoch:
                        self.epoch, self.step_in_epoch = self.epoch + 1, 0
                    for cb in self.callbacks:
                        cb.on_step_end(self, loss)
            for cb in self.callbacks:
                cb.on_train_end(self)
        except KeyboardInterrupt:
            for cb in self.callbacks:
                cb.on_interrupt(self)
            raise
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self
