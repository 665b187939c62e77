"""Chapter 6: the callbacks of the seed's ``nf.train``: loss logging, evaluation, checkpoints.

A callback gets the trainer at the start, after every optimizer step (with the step's loss as a 0-d tensor: reading
it with ``float(loss)`` waits for the device, so the logger does that only when it logs), and at the end, and reads
what it needs from it (``trainer.step``, ``trainer.model``, ...). Records go through ``trainer.log``, which writes
``metrics.jsonl`` and TensorBoard events in the work dir. Under torchrun every rank runs the callbacks; only rank 0
shows a bar, logs, evaluates and writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from lmtut.datasets import LanguageModelingDataset
from lmtut.evaluate import evaluate_perplexity

if TYPE_CHECKING:
    from lmtut.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", loss: torch.Tensor) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...

    def on_interrupt(self, trainer: "Trainer") -> None:
        """Ctrl-C: called before the interrupt propagates."""


class SimpleLossLoggerCallback(Callback):
    """A tqdm bar over the run, and every ``step_freq`` steps a record of mean loss, learning rate and tokens/s
    (with fp16, also the loss scale and how many steps the scaler skipped so far)."""

    def __init__(self, step_freq: int = 25, show_bar: bool = True):
        self.step_freq, self.show_bar = step_freq, show_bar

    def on_train_start(self, trainer):
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc="training",
                        disable=not (self.show_bar and trainer.world.is_main))
        self.losses, self.tokens, self.clock = [], trainer.tokens_seen, trainer.train_seconds

    def on_step_end(self, trainer, loss):
        self.losses.append(loss)
        self.bar.update(1)
        if trainer.step % self.step_freq == 0 or trainer.step == trainer.total_steps:
            now = trainer.train_seconds
            rate = (trainer.tokens_seen - self.tokens) / max(now - self.clock, 1e-9)
            mean = torch.stack(self.losses).mean().item()  # the one host-device sync of the logging interval
            record = {"step": trainer.step, "loss": mean, "lr": trainer.lr, "tokens_per_s": rate}
            if trainer.loss_scale is not None:
                record.update(loss_scale=trainer.loss_scale, skipped_steps=trainer.skipped_steps)
            trainer.log(record)
            self.bar.set_postfix(loss=f"{mean:.3f}", lr=f"{trainer.lr:.2e}", tok_s=f"{rate:,.0f}")
            self.losses, self.tokens, self.clock = [], trainer.tokens_seen, now

    def on_train_end(self, trainer):
        self.bar.close()


class EvaluatorCallback(Callback):
    """Validation perplexity (unsmoothed, each token once) every ``eval_step_freq`` steps and at the end."""

    def __init__(self, eval_dataset: LanguageModelingDataset, eval_step_freq: int = 500, batch_size: int = 32,
                 name: str = "valid"):
        self.dataset, self.freq, self.batch_size, self.name = eval_dataset, eval_step_freq, batch_size, name
        self.last: dict[str, float] | None = None

    def run(self, trainer) -> None:
        if not trainer.world.is_main:
            return  # the other ranks go on and wait for rank 0 at the next gradient all-reduce
        nll, ppl = evaluate_perplexity(trainer.model, self.dataset, self.batch_size)
        self.last = {"step": trainer.step, f"{self.name}_nll": nll, f"{self.name}_ppl": ppl}
        trainer.log(self.last)

    def on_step_end(self, trainer, loss):
        if trainer.step % self.freq == 0 and trainer.step != trainer.total_steps:
            self.run(trainer)

    def on_train_end(self, trainer):
        if self.last is None or self.last["step"] != trainer.step:  # run() itself does nothing off rank 0
            self.run(trainer)


class CheckpointCallback(Callback):
    """Atomic checkpoints every ``step_freq`` steps and at the end, keeping the newest ``keep``."""

    def __init__(self, step_freq: int = 500, keep: int = 3):
        self.freq, self.keep = step_freq, keep

    def save(self, trainer, collective: bool = True) -> None:
        trainer.save_checkpoint(self.keep, collective)

    def on_step_end(self, trainer, loss):
        if trainer.step % self.freq == 0:
            self.save(trainer)

    def on_train_end(self, trainer):
        if trainer.step % self.freq:
            self.save(trainer)

    def on_interrupt(self, trainer):
        self.save(trainer, collective=trainer.world.world_size == 1)  # nothing since the last completed step is lost
