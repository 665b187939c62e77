"""Chapter 10: precision modes, the Apex O-level mapping, fp16 loss scaling and its
state in checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, NaNLoss, Recorder, tiny_model

import lmtut.train as train_cli
from lmtut import (
    LanguageModelingDataset,
    MetricsWriterCallback,
    SimpleLossLoggerCallback,
    TrainConfig,
    Trainer,
    TrainingDiverged,
)
from lmtut.checkpoint import list_checkpoints, load_checkpoint
from lmtut.runtime import Precision, cpu_supports_bf16, resolve_precision

FP16_ON_CPU = torch.amp.autocast_mode.is_autocast_available("cpu")


def test_o_levels_and_names():
    # Apex's levels are NeMo's names: the config maps them, the runtime knows lmtut's
    # modes only
    assert [TrainConfig(precision=level).precision for level in ("O0", "O1", "o2")] == [
        "fp32",
        "amp-fp16",
        "amp-fp16",
    ]
    for bad in ("O3", "fp8"):
        with pytest.raises(ValueError, match="unknown precision"):
            TrainConfig(precision=bad)
    assert resolve_precision("bf16", "cpu") == "amp-bf16"
    assert resolve_precision("auto", "cpu") == (
        "amp-bf16" if cpu_supports_bf16() else "fp32"
    )
    for bad in ("O1", "fp8", ""):
        with pytest.raises(ValueError, match="unknown precision"):
            resolve_precision(bad, "cpu")


def test_autocast_contexts():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    for name, dtype in (("fp32", torch.float32), ("amp-bf16", torch.bfloat16)):
        with Precision.of(name, "cpu").autocast():
            assert (x @ w).dtype == dtype
    assert not Precision.of("amp-bf16", "cpu").grad_scaler().is_enabled()
    assert Precision.of("fp32", "cpu").grad_scaler().is_enabled() is False


def test_log_probs_are_fp32_under_autocast(tokenizer):
    model = tiny_model(tokenizer)
    with Precision.of("amp-bf16", "cpu").autocast():
        ids = torch.zeros(2, 8, dtype=torch.long)
        assert model(ids).log_probs.dtype == torch.float32  # the loss is never bf16
        assert model(ids, targets=ids).target_log_probs.dtype == torch.float32


MODES = [
    "fp32",
    "amp-bf16",
    pytest.param(
        "amp-fp16",
        marks=pytest.mark.skipif(
            not FP16_ON_CPU, reason="this PyTorch has no float16 autocast on CPU"
        ),
    ),
]


@pytest.mark.parametrize("precision", MODES)
def test_each_mode_trains(precision, tokenizer, corpus):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    rec = Recorder()
    cfg = TrainConfig(batch_size=8, max_steps=30, lr=1e-2, precision=precision)
    trainer = Trainer(tiny_model(tokenizer), ds, cfg, callbacks=[rec], device="cpu")
    result = trainer.train()
    losses = list(rec.losses.values())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5, losses
    assert (
        trainer.precision.name == precision
        and result.skipped_steps == trainer.optimization.skipped_steps == 0
    )
    # fp32 master weights in every mode
    assert trainer.model.encoder.embedding.weight.dtype == torch.float32


def fp16_trainer(tokenizer, corpus, work_dir=None, callbacks=(), max_steps=8):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    cfg = TrainConfig(batch_size=4, max_steps=max_steps, lr=1e-2, precision="amp-fp16")
    trainer = Trainer(
        tiny_model(tokenizer, dropout=0.2),
        ds,
        cfg,
        device="cpu",
        work_dir=work_dir,
        callbacks=callbacks,
    )
    # A huge first scale that overflows fp16's gradients, and fast growth: the scale
    # moves both ways in a short run.
    trainer.optimization.scaler = torch.amp.GradScaler(
        "cpu", init_scale=2.0**40, growth_interval=2
    )
    return trainer


@pytest.mark.skipif(
    not FP16_ON_CPU, reason="this PyTorch has no float16 autocast on CPU"
)
def test_fp16_scaler_skips_overflow_and_resumes_exactly(tokenizer, corpus, tmp_path):
    whole = Recorder()
    straight = fp16_trainer(
        tokenizer,
        corpus,
        tmp_path / "a",
        [
            whole,
            SimpleLossLoggerCallback(2, False),
            MetricsWriterCallback(tmp_path / "a"),
        ],
    )
    result = straight.train()
    # 2**40 overflowed: skipped, scale lowered
    assert result.skipped_steps == straight.optimization.skipped_steps > 0
    records = [
        json.loads(line)
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all("loss_scale" in r and "skipped_steps" in r for r in records)
    assert records[-1]["skipped_steps"] == result.skipped_steps

    first = Recorder(stop_at=5)
    with pytest.raises(KeyboardInterrupt):
        # Ctrl-C saves a checkpoint
        fp16_trainer(tokenizer, corpus, tmp_path / "b", [first]).train()
    saved = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert saved["trainer"]["optimization"]["scaler"]["scale"] < 2.0**40
    assert saved["trainer"]["precision"] == "amp-fp16"
    second = Recorder()
    resumed = fp16_trainer(tokenizer, corpus, tmp_path / "b", [second])
    assert resumed.resume()
    resumed.train()
    assert resumed.optimization.loss_scale == straight.optimization.loss_scale
    assert resumed.optimization.skipped_steps == straight.optimization.skipped_steps
    # exact: the resumed steps are the same arithmetic (fp16 autocast and the scaler's
    # state included) on the same state
    assert {**first.losses, **second.losses} == whole.losses


@pytest.mark.skipif(
    not FP16_ON_CPU, reason="this PyTorch has no float16 autocast on CPU"
)
def test_fp16_stops_only_after_the_scaler_gave_up(tokenizer, corpus):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    cfg = TrainConfig(
        batch_size=4, max_steps=10, precision="amp-fp16", max_skipped_steps=3
    )
    trainer = Trainer(
        tiny_model(tokenizer), ds, cfg, device="cpu", loss_fn=NaNLoss(tokenizer.pad_id)
    )
    with pytest.raises(TrainingDiverged, match="skipped 3 steps in a row"):
        trainer.train()
    # steps 1 and 2 were skipped and counted; the third skip stopped the run
    assert trainer.progress.step == 2


def test_cli_maps_the_seeds_amp_opt_level(corpus, tmp_path):
    args = TINY + ["--data_dir", str(corpus), "--max_steps", "2", "--eval_every", "2"]
    assert (
        train_cli.main(
            args + ["--work_dir", str(tmp_path / "o0"), "--amp_opt_level", "O0"]
        )
        == 0
    )
    assert (
        json.loads((tmp_path / "o0" / "results.json").read_text())["precision"]
        == "fp32"
    )
    assert (
        train_cli.main(
            args + ["--work_dir", str(tmp_path / "bf16"), "--precision", "amp-bf16"]
        )
        == 0
    )
    assert (
        json.loads((tmp_path / "bf16" / "results.json").read_text())["precision"]
        == "amp-bf16"
    )
    with pytest.raises(SystemExit):  # refused by the config, before anything runs
        train_cli.main(
            args + ["--work_dir", str(tmp_path / "bad"), "--precision", "fp8"]
        )
