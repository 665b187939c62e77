"""Chapter 6: the training loop's parts on their own (the batches of a step, the
optimizer step, the progress, the checkpoint record, the scoring core) and the loop's
promise that a Ctrl-C never cuts an evaluation or a checkpoint."""

from __future__ import annotations

import copy
import math
import os
import signal
from dataclasses import replace

import pytest
import torch
from helpers import tiny_model

import lmtut.checkpoint as checkpoint_module
import lmtut.trainer as trainer_module
from lmtut import (
    Callback,
    CheckpointError,
    LanguageModelingDataset,
    TrainConfig,
    Trainer,
    TrainingCheckpoint,
    evaluate_perplexity,
    evaluating,
    score_windows,
)
from lmtut.checkpoint import list_checkpoints, load_checkpoint
from lmtut.datasets import StepBatches
from lmtut.optim import Optimization, TrainingDiverged
from lmtut.runtime import DistInfo, Precision
from lmtut.trainer import Progress


@pytest.fixture
def train_windows(tokenizer, corpus):
    return LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )


# -------------------------------------------------------------------------- the batches


def test_the_ranks_share_each_step_and_their_weights_sum_to_the_world(train_windows):
    one = StepBatches(train_windows, batch_size=8, batches_per_step=2, seed=3)
    ranks = [
        StepBatches(train_windows, 8, 2, seed=3, world=DistInfo(rank=r, world_size=2))
        for r in range(2)
    ]
    assert one.steps_per_epoch == len(train_windows) // 16 == ranks[0].steps_per_epoch
    windows = one.window_indices(epoch=1)  # (step, micro-batch, rank, window)
    assert windows.shape == (one.steps_per_epoch, 2, 1, 8)
    # no window twice in an epoch
    assert len(set(windows.flatten().tolist())) == windows.numel()
    # each epoch its own order
    assert not torch.equal(windows, one.window_indices(epoch=2))
    for step, (single, *per_rank) in enumerate(
        zip(one.epoch(1), *(r.epoch(1) for r in ranks))
    ):
        ((batches, weights),) = [single]
        # rank 0's share, then rank 1's
        joined = [torch.cat([rank[0][m][0] for rank in per_rank]) for m in range(2)]
        assert all(torch.equal(a, b[0]) for a, b in zip(joined, batches))
        # one rank: the micro-batches' shares of the step's labels (float64 quotients
        # of label counts: a rounding each)
        assert sum(weights) == pytest.approx(1.0, rel=1e-12)
        # times the world size
        assert sum(w for rank in per_rank for w in rank[1]) == pytest.approx(
            2.0, rel=1e-12
        )
        if step == 2:
            break


def test_a_resumed_epoch_continues_where_it_stopped(train_windows):
    batches = StepBatches(train_windows, batch_size=4, seed=0)
    whole = [b[0][0] for b, _ in batches.epoch(0)]
    later = [b[0][0] for b, _ in batches.epoch(0, start=3)]
    assert len(later) == len(whole) - 3 and all(
        torch.equal(a, b) for a, b in zip(later, whole[3:])
    )


def test_too_few_windows_or_an_uneven_batch_are_refused(train_windows):
    with pytest.raises(ValueError, match="fewer than one step"):
        StepBatches(train_windows, batch_size=len(train_windows) + 1)
    with pytest.raises(ValueError, match="must divide among 3 ranks"):
        StepBatches(train_windows, batch_size=4, world=DistInfo(world_size=3))


# ------------------------------------------------------------------- the optimizer step


def test_optimization_clips_schedules_and_resumes_exactly(tokenizer):
    config = TrainConfig(
        lr=0.1,
        warmup_steps=2,
        lr_policy="linear",
        clip_grad_norm=0.5,
        optimizer_kind="adamw",
    )

    def step(model, optimization, n):
        model.zero_grad()
        loss = sum((p**2).sum() for p in model.parameters())
        optimization.scale(loss).backward()
        optimization.step(n)

    model = tiny_model(tokenizer)
    optimization = Optimization(
        model, config, total_steps=6, precision=Precision.of("fp32", "cpu")
    )
    lrs = []
    for n in range(1, 4):
        step(model, optimization, n)
        lrs.append(optimization.lr)
        # cleared for the next step
        assert all(p.grad is None for p in model.parameters())
    # warmup (s + 1) / (w + 1), then linear decay (float64: a rounding or two)
    assert lrs == pytest.approx([0.1 * 2 / 3, 0.1, 0.1 * 3 / 4], rel=1e-12)
    # as a checkpoint holds it: not the live tensors
    saved = copy.deepcopy(optimization.state_dict())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, optimization, 4)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    other = tiny_model(tokenizer)
    other.load_state_dict(weights)
    again = Optimization(
        other, config, total_steps=6, precision=Precision.of("fp32", "cpu")
    )
    again.load_state_dict(saved)
    step(other, again, 4)
    assert all(torch.equal(after[k], v) for k, v in other.state_dict().items())
    assert again.lr == optimization.lr


def test_optimization_clips_the_gradient_norm(tokenizer):
    model = tiny_model(tokenizer)
    config = TrainConfig(
        lr=1.0,
        optimizer_kind="sgd",
        beta1=0.0,
        clip_grad_norm=0.25,
        warmup_steps=0,
        lr_policy="constant",
    )
    optimization = Optimization(model, config, 1, Precision.of("fp32", "cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    (1000 * sum(p.sum() for p in model.parameters())).backward()
    optimization.step(1)
    moved = math.sqrt(
        sum(((p - b) ** 2).sum().item() for p, b in zip(model.parameters(), before))
    )
    # SGD at lr 1: the step is the clipped gradient. fp32: each of the 2,800 weights
    # (|p| <= 1) moves by 0.25 / sqrt(2800) = 4.7e-3, and p - b is off by up to
    # 2^-24 = 6e-8 of it: 1.3e-5 relative if every error had the same sign
    assert moved == pytest.approx(0.25, rel=1e-4)


def test_too_many_skipped_steps_stop_the_run(tokenizer):
    optimization = Optimization(
        tiny_model(tokenizer),
        TrainConfig(max_skipped_steps=2),
        10,
        Precision.of("fp32", "cpu"),
    )
    optimization.skipped_in_a_row = 2
    with pytest.raises(TrainingDiverged, match="skipped 2 steps in a row"):
        optimization.check_skipped(7)


# --------------------------------------------------------------------- progress, record


def test_progress_counts_steps_epochs_tokens_and_seconds():
    progress = Progress()
    for _ in range(5):
        progress.advance(tokens=64, seconds=0.5, steps_per_epoch=2)
    assert (progress.step, progress.epoch, progress.step_in_epoch) == (5, 2, 1)
    assert progress.tokens_seen == 320 and progress.train_seconds == 2.5
    restored = Progress()
    restored.load_state_dict(progress.state_dict())
    assert restored == progress


def test_a_checkpoint_is_one_record_that_refuses_what_is_not_one(
    tmp_path, tokenizer, train_windows
):
    trainer = Trainer(
        tiny_model(tokenizer),
        train_windows,
        TrainConfig(batch_size=4, max_steps=2),
        device="cpu",
        work_dir=tmp_path,
    )
    assert trainer.train().steps == 2 and trainer.checkpointer.work_dir == tmp_path
    record = TrainingCheckpoint.read(list_checkpoints(tmp_path)[-1])
    assert (
        record.trainer["progress"]["step"] == 2
        and record.ema is None
        and record.run_info is None
    )
    assert all(
        torch.equal(v, trainer.model.state_dict()[k])
        for k, v in record.weights().items()
    )
    with pytest.raises(CheckpointError, match="not an lmtut training checkpoint"):
        TrainingCheckpoint.from_state({"w": torch.ones(1)}, "x.pt")
    with pytest.raises(CheckpointError, match="lacks the trainer's optimization"):
        state = record.to_state()
        del state["trainer"]["optimization"]
        TrainingCheckpoint.from_state(state, "x.pt")


# --------------------------------------------------------------------- the scoring core


def test_the_scoring_core_scores_what_the_model_scores(tokenizer, corpus):
    valid = LanguageModelingDataset(
        tokenizer, corpus / "valid.txt", max_sequence_length=16, batch_step=4
    )
    model = tiny_model(tokenizer, dropout=0.5)
    ids, mask, labels = (torch.stack(t) for t in zip(*(valid[i] for i in range(3))))
    with evaluating(model):
        assert not model.training
        scores = score_windows(model, ids, mask, labels, valid.pad_id)
        # the whole distribution, every position
        whole = model(ids, input_mask=mask).log_probs
    assert model.training  # the flag comes back
    scored = labels != valid.pad_id
    assert torch.equal(scores.targets, labels[scored])
    # fp32: the softmax at the scored rows only (another matmul blocking): a few 2^-24
    # roundings of log-probabilities below ~7
    assert torch.allclose(
        scores.log_probs, whole.gather(-1, labels[..., None])[..., 0][scored], atol=1e-5
    )
    # exact: mean_loss is this mean, negated
    assert scores.mean_loss().item() == -scores.log_probs.mean().item()
    nll, _ = evaluate_perplexity(model, valid)
    by_hand = torch.cat(
        [
            score_windows(
                model.eval(), *(t[None] for t in valid[i]), valid.pad_id
            ).log_probs
            for i in range(len(valid))
        ]
    )
    # fp32 windows 32 at a time against one at a time (another blocking, as on AVX2):
    # each log-probability a few 2^-24 of ~4 apart, ~1e-7 in the mean
    assert nll == pytest.approx(-by_hand.double().mean().item(), rel=1e-6)


def test_first_n_tokens_of_a_split(tokenizer, corpus):
    valid = LanguageModelingDataset(
        tokenizer, corpus / "valid.txt", max_sequence_length=16, batch_step=4
    )
    head = valid.first(50)
    assert head.num_targets == 50 and torch.equal(head.ids, valid.ids[:51])
    assert (head.max_sequence_length, head.batch_step) == (16, 4)
    assert valid.first(None) is valid and valid.first(10**9) is valid
    assert valid.first(50, batch_step=16).batch_step == 16


# ------------------------------------------------------------------------------- Ctrl-C


class Records(Callback):
    def __init__(self):
        self.records = []

    def on_log(self, record):
        self.records.append(record)


def interrupt_inside(monkeypatch, module, name: str) -> None:
    """Make ``module.NAME`` send SIGINT to this process once, then do its work."""
    real, sent = getattr(module, name), []

    def with_ctrl_c(*args, **kwargs):
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, with_ctrl_c)


@pytest.mark.parametrize("inside", ["evaluate_perplexity", "write_checkpoint"])
def test_ctrl_c_waits_for_the_evaluation_and_the_checkpoint(
    tokenizer, corpus, train_windows, tmp_path, monkeypatch, inside
):
    valid = LanguageModelingDataset(
        tokenizer, corpus / "valid.txt", max_sequence_length=16, batch_step=4
    )
    config = TrainConfig(
        batch_size=4, max_steps=8, eval_every=2, checkpoint_every=2, keep_checkpoints=10
    )
    # the first evaluation (the trainer's), or the first checkpoint (written by the
    # checkpointer), at step 2
    interrupt_inside(
        monkeypatch,
        trainer_module if inside == "evaluate_perplexity" else checkpoint_module,
        inside,
    )
    log = Records()
    trainer = Trainer(
        tiny_model(tokenizer),
        train_windows,
        config,
        {"valid": valid},
        callbacks=[log],
        device="cpu",
        work_dir=tmp_path,
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert trainer.progress.step == 2
    # the evaluation finished and was logged
    assert [r["step"] for r in log.records if "valid_ppl" in r] == [2]
    assert [int(p.stem[-7:]) for p in list_checkpoints(tmp_path)] == [2]
    # whole, and at the step it names
    saved = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert saved["trainer"]["progress"]["step"] == 2
    resumed = Trainer(
        tiny_model(tokenizer),
        train_windows,
        replace(config, max_steps=4),
        {"valid": valid},
        device="cpu",
        work_dir=tmp_path,
    )
    assert resumed.resume() and resumed.train().steps == 4
