"""Chapter 6: the callbacks of NeMo's ``nf.train``, which observe the loop: the loss logger and the metrics files.

A callback is called at the start, after every optimizer step (with the step's loss as a 0-d tensor: reading it with
``float(loss)`` waits for the device, so the logger does that only when it logs), at the end and when training
closes, however it ended; it reads what it needs from the trainer (``trainer.step``, ``trainer.lr``, ...). Every
record that is logged (``trainer.log(record)``: the loss logger's, the evaluations') reaches every callback's
``on_log``: :class:`MetricsWriterCallback` writes it to ``metrics.jsonl`` and TensorBoard. Under torchrun every rank
runs the callbacks; only rank 0 shows a bar and logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from lmtut.runtime import atomic_write_text

if TYPE_CHECKING:  # lmtut.trainer imports this module
    from lmtut.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None: ...

    def on_log(self, trainer: Trainer, record: dict[str, float]) -> None:
        """A record (``step`` and figures) that a callback passed to ``trainer.log``; rank 0 only."""

    def on_train_end(self, trainer: Trainer) -> None: ...

    def on_close(self, trainer: Trainer) -> None:
        """Always called last, however training ended: release files and bars."""


class SimpleLossLoggerCallback(Callback):
    """A tqdm bar over the run, and every ``log_every`` steps (the trainer's, unless given) a record of mean loss,
    learning rate and tokens/s (with fp16, also the loss scale and how many steps the scaler skipped so far)."""

    def __init__(self, log_every: int | None = None, show_bar: bool = True, desc: str = "training"):
        self.log_every, self.show_bar, self.desc = log_every, show_bar, desc

    def on_train_start(self, trainer):
        self.every = self.log_every or trainer.config.log_every
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=self.desc,
                        disable=not (self.show_bar and trainer.world.is_main))
        self.losses, self.tokens, self.clock = [], trainer.tokens_seen, trainer.train_seconds

    def on_step_end(self, trainer, loss):
        self.losses.append(loss)
        self.bar.update(1)
        if trainer.step % self.every == 0 or trainer.step == trainer.total_steps:
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
