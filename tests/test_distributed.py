"""Chapter 11: torchrun with 2 Gloo processes on CPU gives the single-process losses;
only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY

from lmtut import StepBatches, WordTokenizer, prepare_corpus, split_dataset
from lmtut.checkpoint import list_checkpoints
from lmtut.runtime import DistInfo, init_distributed, world

# 4 windows a step: 2 per rank
ARGS = TINY + ["--dropout", "0", "--log_every", "1", "--max_steps", "6"]


def launch(
    corpus: Path, work_dir: Path, nproc: int, *extra: str
) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU and Gloo, whatever the machine
    if nproc == 1:
        cmd = [sys.executable, "-m", "lmtut.train"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "lmtut.train",
        ]
    cmd += ARGS + ["--data_dir", str(corpus), "--work_dir", str(work_dir), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(work_dir: Path) -> dict[int, float]:
    records = [
        json.loads(line)
        for line in (work_dir / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), (
        "a step was logged twice: more than one rank wrote"
    )
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_world_of_one_without_torchrun():
    assert world() == DistInfo() and world().is_main
    assert init_distributed("cpu") == (DistInfo(), torch.device("cpu"))


def test_two_ranks_match_one_and_only_rank0_writes(corpus, tmp_path):
    launch(corpus, tmp_path / "one", 1)
    two = launch(corpus, tmp_path / "two", 2)
    assert "2 process(es)" in two.stderr and two.stdout.count("valid perplexity") == 1
    # fp32 AdamW: the all-reduce, the ranks' smaller batches and their one thread each
    # reorder sums; over 6 steps the losses stay ~1e-7 relative apart (measured on AMX,
    # AVX-512 and AVX2)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    a, b = (
        json.loads((tmp_path / run / "results.json").read_text())
        for run in ("one", "two")
    )
    assert b["world_size"] == 2 and b["tokens"] == a["tokens"]
    # exp(nll): the losses' 1e-5 relative on an nll of ~3 nats is 3e-5 on the perplexity
    assert b["valid_ppl"] == pytest.approx(a["valid_ppl"], rel=1e-4)
    files = sorted(
        str(p.relative_to(tmp_path / "two"))
        for p in (tmp_path / "two").rglob("*")
        if p.is_file()
    )
    assert [f for f in files if not f.startswith("tensorboard/")] == [
        "checkpoints/ckpt-step0000004.pt",
        "checkpoints/ckpt-step0000006.pt",
        "config.json",
        "metrics.jsonl",
        "results.json",
    ]
    # one event file: rank 0's
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1

    # Resume under torchrun: drop the last checkpoint, go on from step 4, get the same
    # steps 5 and 6.
    list_checkpoints(tmp_path / "two")[-1].unlink()
    launch(corpus, tmp_path / "two", 2, "--resume")
    # as above
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


def test_global_batch_must_divide(corpus, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=3",
        "-m",
        "lmtut.train",
        *ARGS,
        "--data_dir",
        str(corpus),
        "--work_dir",
        str(tmp_path / "w"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and "must divide among 3 ranks" in done.stderr


def test_adaptive_softmax_under_torchrun(corpus, tmp_path):
    # Tiny cutoffs and 2 windows per rank: some steps leave a tail cluster without a
    # target, hence without gradients.
    adaptive = [
        "--softmax",
        "adaptive",
        "--no-tie_weights",
        "--adaptive_cutoffs",
        "6,24",
    ]
    launch(corpus, tmp_path / "one", 1, *adaptive)
    launch(corpus, tmp_path / "two", 2, *adaptive)
    # fp32 AdamW, sums reordered as in the first test
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


def test_the_modern_block_with_muon_under_torchrun(corpus, tmp_path):
    # Muon orthogonalizes each matrix's whole gradient: it must see the all-reduced one,
    # as AdamW does. torch.optim.Muon orthogonalizes in bfloat16: where the two runs'
    # fp32 gradients differ in their last bits (the all-reduce adds in another order),
    # an element of the update can round to the neighbouring bf16 number, 2^-8 of it
    # apart, and which elements do depends on the CPU's bf16 kernels (AVX-512, AMX). To
    # first order the loss then differs by at most 2^-8 of what the updates changed it
    # by since the first step, plus float32 rounding (the AdamW test's 1e-5).
    modern = [
        "--norm",
        "rms",
        "--positions",
        "rope",
        "--activation",
        "swiglu",
        "--no-bias",
        "--qk_norm",
        "--optimizer_kind",
        "muon",
        "--muon_lr",
        "0.02",
    ]
    launch(corpus, tmp_path / "one", 1, *modern)
    launch(corpus, tmp_path / "two", 2, *modern)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == sorted(one)
    first = one[min(one)]
    for step, loss in one.items():
        bound = 2**-8 * abs(loss - first) + 1e-5 * abs(loss)
        assert abs(two[step] - loss) <= bound, (step, loss, two[step], bound)


def test_accumulation_and_a_padded_window_under_torchrun(corpus, tmp_path):
    # Two micro-batches a step (no_sync on the first), and seed 1's first step holds the
    # split's padded last window (4 labels of 16), so the loss weights are unequal.
    # fp32, the same ops in another order: rounding only (the AdamW test's 1e-5).
    extra = ["--seed", "1", "--batches_per_step", "2", "--max_steps", "4"]
    desc = prepare_corpus(corpus)
    train = split_dataset(desc, WordTokenizer(desc.vocab_file), "train", 16)
    first_step = next(StepBatches(train, 4, 2, 1, DistInfo(0, 2)).epoch(0))
    assert first_step[1] != [0.5, 0.5]  # the weights that a full window would give
    launch(corpus, tmp_path / "one", 1, *extra)
    launch(corpus, tmp_path / "two", 2, *extra)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    assert two == pytest.approx(one, rel=1e-5)
