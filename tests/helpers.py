"""Helpers shared by the test modules: a tiny model, a loss recorder, a NaN loss, the
tiny command-line arguments."""

from __future__ import annotations

from dataclasses import replace

import torch

from lmtut import (
    Callback,
    PaddedSmoothedCrossEntropyLoss,
    Trainer,
    TransformerLM,
    TransformerLMConfig,
)


def tiny_model(tokenizer, dropout=0.0):
    torch.manual_seed(0)
    return TransformerLM(
        TransformerLMConfig(
            vocab_size=tokenizer.vocab_size,
            d_model=16,
            num_layers=1,
            num_attn_heads=2,
            d_inner=32,
            max_sequence_length=16,
            dropout=dropout,
        )
    )


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.losses, self.stop_at = {}, stop_at

    def on_step_end(self, record):
        self.losses[record.step] = float(record.loss)
        if record.step == self.stop_at:
            raise KeyboardInterrupt  # a Ctrl-C right after this step


class NaNLoss(PaddedSmoothedCrossEntropyLoss):
    # the plain loss, turned into NaN: every step's
    def of_output(self, output, labels):
        return super().of_output(output, labels) * float("nan")


TINY = [
    "--d_model",
    "16",
    "--num_layers",
    "1",
    "--num_attn_heads",
    "2",
    "--d_inner",
    "32",
    "--max_sequence_length",
    "16",
    "--predict_last_k",
    "4",
    "--batch_size",
    "4",
    "--lr",
    "0.01",
    "--dropout",
    "0.1",
    "--eval_every",
    "4",
    "--checkpoint_every",
    "4",
    "--log_every",
    "2",
]


def interrupted_run(
    model,
    dataset,
    config,
    work_dir,
    stop_at=None,
    resume=False,
    checkpoint_every=4,
    **kwargs,
):
    """Train on the CPU with a Recorder and checkpoints, as a user who may press Ctrl-C:
    (losses by step, trainer)."""
    rec = Recorder(stop_at)
    config = replace(config, checkpoint_every=checkpoint_every, keep_checkpoints=2)
    trainer = Trainer(
        model,
        dataset,
        config,
        device="cpu",
        work_dir=work_dir,
        callbacks=[rec],
        **kwargs,
    )
    if resume:
        trainer.resume()
    try:
        trainer.train()
    except KeyboardInterrupt:
        pass
    return rec.losses, trainer
