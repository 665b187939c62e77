"""Chapter 6: the callbacks of the seed's ``nf.train``: loss logging, evaluation, checkpoints; and the metrics files.

A callback gets the trainer at the start, after every optimizer step (with the step's loss as a 0-d tensor: reading
it with ``float(loss)`` waits for the device, so the logger does that only when it logs), at the end, on Ctrl-C and
when training closes, and reads what it needs from it (``trainer.step``, ``trainer.model``, ...). A record that one
callback makes (``trainer.log(record)``) reaches every callback's ``on_log``: :class:`MetricsWriterCallback` writes
it to ``metrics.jsonl`` and TensorBoard. Under torchrun every rank runs the callbacks; only rank 0 shows a bar,
logs, evaluates and writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from lmtut.datasets import LanguageModelingDataset
from lmtut.files import atomic_write_text
from lmtut.perplexity import evaluate_perplexity

Trainer = Any  # lmtut.trainer.Trainer, which imports this module


class Callback:
    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None: ...

    def on_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        """A record (``step`` and figures) that a callback passed to ``trainer.log``; rank 0 only."""

    def on_train_end(self, trainer: Trainer) -> None: ...

    def on_interrupt(self, trainer: Trainer) -> None:
        """Ctrl-C: called before the interrupt propagates."""

    def on_close(self, trainer: Trainer) -> None:
        """Always called last, however training ended: release files and bars."""


class SimpleLossLoggerCallback(Callback):
    """A tqdm bar over the run, and every ``log_every`` steps a record of mean loss, learning rate and tokens/s
    (with fp16, also the loss scale and how many steps the scaler skipped so far)."""

    def __init__(self, log_every: int = 25, show_bar: bool = True):
        self.log_every, self.show_bar = log_every, show_bar

    def on_train_start(self, trainer):
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc="training",
                        disable=not (self.show_bar and trainer.world.is_main))
        self.losses, self.tokens, self.clock = [], trainer.tokens_seen, trainer.train_seconds

    def on_step_end(self, trainer, loss):
        self.losses.append(loss)
        self.bar.update(1)
        if trainer.step % self.log_every == 0 or trainer.step == trainer.total_steps:
            now = trainer.train_seconds
            rate = (trainer.tokens_seen - self.tokens) / max(now - self.clock, 1e-9)
            mean = torch.stack(self.losses).mean().item()  # the one host-device sync of the logging interval
            record = {"step": trainer.step, "loss": mean, "lr": trainer.lr, "tokens_per_s": rate}
            if trainer.loss_scale is not None:
                record.update(loss_scale=trainer.loss_scale, skipped_steps=trainer.skipped_steps)
            trainer.log(record)
            self.bar.set_postfix(loss=f"{mean:.3f}", lr=f"{trainer.lr:.2e}", tok_s=f"{rate:,.0f}")
            self.losses, self.tokens, self.clock = [], trainer.tokens_seen, now

    def on_close(self, trainer):
        if hasattr(self, "bar"):
            self.bar.close()


class EvaluatorCallback(Callback):
    """Validation perplexity (unsmoothed, each token once) every ``eval_every`` steps and at the end.

    It scores ``trainer.eval_model``: the averaged weights when the run averages them (chapter 7). With
    ``name="train"`` over a fixed slice of the training split it logs ``train_ppl``, the training perplexity
    measured the same way (eval mode, no dropout), to draw on the same axes as ``valid_ppl``.
    """

    def __init__(self, eval_dataset: LanguageModelingDataset, eval_every: int = 500, batch_size: int = 32,
                 name: str = "valid"):
        self.dataset, self.eval_every, self.batch_size, self.name = eval_dataset, eval_every, batch_size, name
        self.last: dict[str, float] | None = None

    def run(self, trainer) -> None:
        if not trainer.world.is_main:
            return  # the other ranks go on and wait for rank 0 at the next gradient all-reduce
        nll, ppl = evaluate_perplexity(trainer.eval_model, self.dataset, self.batch_size)
        self.last = {"step": trainer.step, f"{self.name}_nll": nll, f"{self.name}_ppl": ppl}
        trainer.log(self.last)

    def on_step_end(self, trainer, loss):
        if trainer.step % self.eval_every == 0 and trainer.step != trainer.total_steps:
            self.run(trainer)

    def on_train_end(self, trainer):
        if self.last is None or self.last["step"] != trainer.step:  # run() itself does nothing off rank 0
            self.run(trainer)


class CheckpointCallback(Callback):
    """Atomic checkpoints every ``checkpoint_every`` steps and at the end, keeping the newest ``keep``."""

    def __init__(self, checkpoint_every: int = 500, keep: int = 3):
        self.checkpoint_every, self.keep = checkpoint_every, keep

    def save(self, trainer, collective: bool = True) -> None:
        trainer.save_checkpoint(self.keep, collective)

    def on_step_end(self, trainer, loss):
        if trainer.step % self.checkpoint_every == 0:
            self.save(trainer)

    def on_train_end(self, trainer):
        if trainer.step % self.checkpoint_every:
            self.save(trainer)

    def on_interrupt(self, trainer):
        self.save(trainer, collective=trainer.world.world_size == 1)  # nothing since the last completed step is lost


class MetricsWriterCallback(Callback):
    """Every record to ``WORK_DIR/metrics.jsonl`` (one JSON object a line) and to TensorBoard (``tensorboard/``).

    At the start it drops the records of steps after the trainer's (those a resumed run will log again; all of
    them in a fresh run), rewriting the file atomically.
    """

    def __init__(self, work_dir: str | Path | None = None):
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.writer: SummaryWriter | None = None

    def on_train_start(self, trainer):
        self.work_dir = self.work_dir or trainer.work_dir
        if self.work_dir is None:
            return
        path = self.work_dir / "metrics.jsonl"
        if trainer.world.is_main and path.is_file():
            keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= trainer.step]
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    def on_log(self, trainer, record):
        if self.work_dir is None:
            return  # a trainer without a work dir keeps no files
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            self.writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, record["step"])

    def on_close(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
