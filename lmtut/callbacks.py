"""Chapter 6: the callbacks of NeMo's ``nf.train``, which observe the loop: the loss
logger and the metrics files.

A callback is called at the start, after every optimizer step, at the end, and when
training closes however it ended. It is handed a frozen :class:`StepRecord` (the step,
its loss as a 0-d tensor, the learning rate, the tokens and seconds so far, fp16's loss
scale and skipped steps) and never reaches into the Trainer. A callback that has
something to log returns it from ``on_step_end``; the Trainer hands every such record,
and every evaluation's, to each callback's ``on_log`` (on rank 0):
:class:`MetricsWriterCallback` writes them to ``metrics.jsonl`` and TensorBoard. A
callback that decides the run should end (early stopping) raises :class:`StopTraining`.
Reading the loss with ``float(record.loss)`` waits for the device, so the logger does
that only when it logs. Under torchrun every rank runs the callbacks; only rank 0 shows
a bar and logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from lmtut.runtime import atomic_write_text


@dataclass(frozen=True)
class StepRecord:
    """Where training stands after a step (at ``on_train_start``: before the first step
    it will take)."""

    step: int  # optimizer steps done
    total_steps: int  # where the run ends
    lr: float  # the learning rate of the next step
    tokens_seen: int  # input tokens so far, over all ranks
    # seconds of training steps so far (evaluation and checkpoints excluded)
    train_seconds: float
    is_main: bool  # rank 0, the rank that shows bars and writes files
    # the step's mean loss, 0-d, on the device (None at the start)
    loss: torch.Tensor | None = None
    loss_scale: float | None = None  # fp16's loss scale (None without a scaler)
    skipped_steps: int = 0  # steps fp16's scaler skipped so far


class StopTraining(Exception):
    """Raised by a callback to end training after this step; the last evaluation and
    checkpoint still run."""


class Callback:
    def on_train_start(self, record: StepRecord) -> None: ...

    def on_step_end(self, record: StepRecord) -> dict[str, float] | None:
        """Return a record (``step`` and figures) to log it, or None."""

    def on_log(self, record: dict[str, float]) -> None:
        """A logged record: a callback's, or an evaluation's; rank 0 only."""

    def on_train_end(self, record: StepRecord) -> None: ...

    def on_close(self) -> None:
        """Always called last, however training ended: release files and bars."""


class SimpleLossLoggerCallback(Callback):
    """A tqdm bar over the run, and every ``log_every`` steps a record of mean loss,
    learning rate and tokens/s (with fp16, also the loss scale and how many steps the
    scaler skipped so far)."""

    def __init__(self, log_every: int, show_bar: bool = True, desc: str = "training"):
        self.log_every, self.show_bar, self.desc = log_every, show_bar, desc

    def on_train_start(self, record):
        self.bar = tqdm(
            total=record.total_steps,
            initial=record.step,
            desc=self.desc,
            disable=not (self.show_bar and record.is_main),
        )
        self.losses, self.since = [], record

    def on_step_end(self, record):
        self.losses.append(record.loss)
        self.bar.update(1)
        if record.step % self.log_every and record.step != record.total_steps:
            return None
        seconds = max(record.train_seconds - self.since.train_seconds, 1e-9)
        rate = (record.tokens_seen - self.since.tokens_seen) / seconds
        # the one host-device sync of the logging interval
        mean = torch.stack(self.losses).mean().item()
        logged = {
            "step": record.step,
            "loss": mean,
            "lr": record.lr,
            "tokens_per_s": rate,
        }
        if record.loss_scale is not None:
            logged.update(
                loss_scale=record.loss_scale, skipped_steps=record.skipped_steps
            )
        self.bar.set_postfix(
            loss=f"{mean:.3f}", lr=f"{record.lr:.2e}", tok_s=f"{rate:,.0f}"
        )
        self.losses, self.since = [], record
        return logged

    def on_close(self):
        if hasattr(self, "bar"):
            self.bar.close()


class MetricsWriterCallback(Callback):
    """Every record to ``WORK_DIR/metrics.jsonl`` (one JSON object a line) and to
    TensorBoard (``tensorboard/``).

    At the start it drops the records of steps after the run's (those a resumed run will
    log again; all of them in a fresh run), rewriting the file atomically. Without a
    work dir it keeps no files.
    """

    def __init__(self, work_dir: str | Path | None):
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.writer: SummaryWriter | None = None

    def on_train_start(self, record):
        path = self.work_dir / "metrics.jsonl" if self.work_dir is not None else None
        if record.is_main and path is not None and path.is_file():
            keep = [
                line
                for line in path.read_text().splitlines()
                if json.loads(line)["step"] <= record.step
            ]
            atomic_write_text(path, "".join(line + "\n" for line in keep))

    def on_log(self, record):
        if self.work_dir is None:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            self.writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, record["step"])

    def on_close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
