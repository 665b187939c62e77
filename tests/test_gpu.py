"""The GPU tier: the Trainer on CUDA in each precision, torch.compile, evaluation and
checkpoints on CUDA, and two NCCL processes. Skipped, with the reason shown, where there
is no GPU or ``LMTUT_DEVICE`` asks for the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import TINY, Recorder, tiny_model

import lmtut.train as train_cli
from lmtut import (
    LanguageModelingDataset,
    TrainConfig,
    Trainer,
    default_device,
    evaluate_perplexity,
    load_for_inference,
)
from lmtut.checkpoint import list_checkpoints

ON_GPU = default_device().type == "cuda"
pytestmark = pytest.mark.skipif(
    not ON_GPU,
    reason="GPU tier: no CUDA GPU here, or LMTUT_DEVICE asks for another device",
)


def train(tokenizer, corpus, precision="fp32", steps=30, **kw):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    rec = Recorder()
    config = TrainConfig(
        batch_size=8, max_steps=steps, lr=1e-2, precision=precision, **kw
    )
    trainer = Trainer(tiny_model(tokenizer), ds, config, callbacks=[rec], device="cuda")
    trainer.train()
    return trainer, list(rec.losses.values())


@pytest.mark.parametrize("precision", ["fp32", "amp-fp16", "amp-bf16"])
def test_each_precision_trains_on_cuda(tokenizer, corpus, precision):
    if precision == "amp-bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    trainer, losses = train(tokenizer, corpus, precision)
    assert trainer.device.type == "cuda" and trainer.precision.name == precision
    assert all(torch.isfinite(torch.tensor(losses)))
    # learning, not rounding: the CPU's runs end near 0.62 in every mode
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5, losses
    assert trainer.optimization.scaler.is_enabled() == (precision == "amp-fp16")
    # fp32 master weights
    assert next(trainer.model.parameters()).dtype == torch.float32


def test_compiled_model_trains_like_the_eager_one(tokenizer, corpus):
    _, eager = train(tokenizer, corpus, steps=10)
    _, compiled = train(tokenizer, corpus, steps=10, compile=True)
    # TF32 in both (fp32 on CUDA): the compiler fuses and reorders fp32 operations
    # (2^-24 each), so now and then a matmul operand rounds to the neighbouring TF32
    # number (2^-10 apart); ten Adam steps carry that on. Not yet measured on a GPU.
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-3)


def test_evaluation_and_checkpoint_round_trip_on_cuda(tokenizer, corpus, tmp_path):
    work = tmp_path / "run"
    assert (
        train_cli.main(
            TINY
            + ["--data_dir", str(corpus), "--work_dir", str(work), "--max_steps", "6"]
        )
        == 0
    )
    results = json.loads((work / "results.json").read_text())
    assert results["device"].startswith("cuda")
    model, tok, config = load_for_inference(list_checkpoints(work)[-1])
    assert next(model.parameters()).device.type == "cuda"
    valid = LanguageModelingDataset(
        tok,
        corpus / "valid.txt",
        config.model.max_sequence_length,
        config.data.predict_last_k,
    )
    _, on_gpu = evaluate_perplexity(model, valid)
    # the run's own score: the same weights, windows, batches and kernels (TF32, as the
    # run's Trainer left it), so the same number; 1e-6 lets a kernel reorder a sum
    assert on_gpu == pytest.approx(results["valid_ppl"], rel=1e-6)
    _, on_cpu = evaluate_perplexity(model.cpu(), valid)
    # TF32 reads 10 of fp32's 23 mantissa bits: each matmul operand is up to 2^-10
    # off, each log-probability a few 2^-10 of its O(1) logits, with signs that mostly
    # cancel in the mean (3e-5 when TF32 is emulated on a CPU for such a run)
    assert on_gpu == pytest.approx(on_cpu, rel=2**-10)
    ds = LanguageModelingDataset(tok, corpus / "train.txt", max_sequence_length=16)
    trained = Trainer(
        tiny_model(tok),
        ds,
        TrainConfig(batch_size=4, max_steps=2),
        device="cuda",
        work_dir=tmp_path / "ckpt",
    ).train()
    resumed = Trainer(
        tiny_model(tok),
        ds,
        TrainConfig(batch_size=4, max_steps=2),
        device="cuda",
        work_dir=tmp_path / "ckpt",
    )
    assert resumed.resume() and resumed.progress.step == trained.steps == 2


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two GPUs for a two-process NCCL run"
)
def test_two_nccl_processes_give_the_single_process_losses(corpus, tmp_path):
    args = TINY + [
        "--dropout",
        "0",
        "--log_every",
        "1",
        "--max_steps",
        "6",
        "--data_dir",
        str(corpus),
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    runs = {}
    for n in (1, 2):
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
        ]
        done = subprocess.run(
            launcher
            + ["-m", "lmtut.train", *args, "--work_dir", str(tmp_path / str(n))],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        records = [
            json.loads(line)
            for line in (tmp_path / str(n) / "metrics.jsonl").read_text().splitlines()
        ]
        runs[n] = [r["loss"] for r in records if "loss" in r]
    # TF32 in both runs reads the same operands the same way; the ranks' batches and
    # NCCL's all-reduce reorder fp32 sums (the Gloo test's 1e-5), which can round a
    # later operand to its TF32 neighbour (2^-10): 1e-4. Not yet measured on GPUs.
    assert runs[2] == pytest.approx(runs[1], rel=1e-4)
