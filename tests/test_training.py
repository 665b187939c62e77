"""Chapter 6: LR policies, optimizers, accumulation, checkpoints, resume, the NaN stop
and the command lines."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from helpers import TINY, NaNLoss, Recorder, interrupted_run, tiny_model

import lmtut.evaluate as evaluate_cli
import lmtut.generate as generate_cli
import lmtut.train as train_cli
from lmtut import (
    CheckpointError,
    LanguageModelingDataLayer,
    LanguageModelingDataset,
    NovoGrad,
    PaddedSmoothedCrossEntropyLoss,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    TransformerLM,
    TransformerLMConfig,
    evaluate_perplexity,
    get_lr_policy,
    get_optimizer,
)
from lmtut.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    write_checkpoint,
)

# -------------------------------------------------------------------------- LR policies


def test_lr_policy_shapes():
    # float64 schedules: a rounding or two, far under isclose's 1e-9
    T, W = 100, 10
    for name in ("constant", "cosine", "linear", "inverse_sqrt"):
        f = get_lr_policy(name, T, warmup_steps=W)
        warm = [f(s) for s in range(W)]
        # linear warmup
        assert warm == sorted(warm) and warm[0] < 0.2 and warm[-1] < 1.0
        assert math.isclose(f(W), 1.0)  # the peak right after warmup
    cosine, linear = (
        get_lr_policy("cosine", T, warmup_steps=W),
        get_lr_policy("linear", T, warmup_steps=W),
    )
    # halfway down
    assert math.isclose(cosine(W + 45), 0.5) and math.isclose(linear(W + 45), 0.5)
    # cosine: slow, fast, slow
    assert cosine(W + 20) > linear(W + 20) and cosine(W + 70) < linear(W + 70)
    # the schedule ends with the run
    assert cosine(T) == 0.0 and linear(T) == 0.0 and linear(T + 50) == 0.0
    assert get_lr_policy("constant", T, warmup_steps=W)(T - 1) == 1.0
    assert math.isclose(
        get_lr_policy("inverse_sqrt", T, warmup_steps=W)(40), math.sqrt(10 / 40)
    )
    assert math.isclose(
        get_lr_policy("CosineAnnealing", T, warmup_ratio=0.1, min_lr_ratio=0.1)(T), 0.1
    )
    with pytest.raises(ValueError, match="unknown lr_policy"):
        get_lr_policy("step", T)


def test_optimizers_by_name():
    p = [torch.nn.Parameter(torch.ones(2, 2))]
    kinds = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "novograd": NovoGrad,
    }
    for name, cls in kinds.items():
        assert isinstance(get_optimizer(name, p, 0.1), cls)
    with pytest.raises(ValueError, match="unknown optimizer_kind"):
        get_optimizer("lamb", p, 0.1)


def test_novograd_by_hand():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = NovoGrad([w], lr=0.1, betas=(0.5, 0.5), eps=0.0, weight_decay=0.1)
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0])]
    m, v, ref = torch.zeros(2), None, w.detach().clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        v = g.pow(2).sum() if v is None else 0.5 * v + 0.5 * g.pow(2).sum()
        m = 0.5 * m + (g / v.sqrt() + 0.1 * ref)
        ref = ref - 0.1 * m
    # fp32, two steps on values up to 2 in another order: a few 2^-24 roundings
    assert torch.allclose(w.detach(), ref)


# -------------------------------------------------------------------------- the trainer


def test_accumulation_equals_one_large_batch(tokenizer, corpus):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    runs = []
    for batch, accumulate in ((8, 1), (4, 2), (2, 4)):
        rec = Recorder()
        model = tiny_model(tokenizer)
        # SGD: Adam would divide the key bias's gradient, exactly zero in theory
        # (softmax ignores it) and float noise in practice, by its own size, and turn
        # 1e-10 noise into lr-sized differences.
        cfg = TrainConfig(
            batch_size=batch,
            batches_per_step=accumulate,
            max_steps=5,
            lr=0.1,
            optimizer_kind="sgd",
        )
        Trainer(model, ds, cfg, callbacks=[rec], device="cpu").train()
        runs.append(
            (
                list(rec.losses.values()),
                [p.detach().clone() for p in model.parameters()],
            )
        )
    # fp32: the micro-batches' gradients summed in another order (~1e-7 relative),
    # carried through 5 SGD steps (1e-7 of losses ~4.5, 6e-8 of weights, measured)
    for losses, params in runs[1:]:
        assert losses == pytest.approx(runs[0][0], rel=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(params, runs[0][1]))


def test_resume_gives_the_same_losses(tokenizer, corpus, tmp_path):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    # 19 windows, 4 per step: 4 steps an epoch, so 10 steps cross two epoch boundaries;
    # dropout tests the RNG.
    cfg = TrainConfig(batch_size=4, max_steps=10, lr=1e-2, warmup_ratio=0.2)

    def run(work_dir, stop_at=None, resume=False):
        return interrupted_run(
            tiny_model(tokenizer, dropout=0.3), ds, cfg, work_dir, stop_at, resume
        )

    whole, _ = run(tmp_path / "a")
    # interrupted after step 6 (a checkpoint is written on Ctrl-C)
    first, _ = run(tmp_path / "b", stop_at=6)
    assert [int(p.stem[-7:]) for p in list_checkpoints(tmp_path / "b")] == [4, 6]
    second, trainer = run(tmp_path / "b", resume=True)
    assert min(second) == 7 and trainer.progress.step == 10
    # exact: the resumed steps are the same arithmetic on the same state
    assert {**first, **second} == whole
    # the newest 2 kept
    assert [int(p.stem[-7:]) for p in list_checkpoints(tmp_path / "b")] == [8, 10]


def test_ctrl_c_inside_a_step_waits_for_its_end(tokenizer, corpus, tmp_path):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    cfg = TrainConfig(batch_size=4, max_steps=8, lr=1e-2)
    calls = {"n": 0}

    # SIGINT arrives mid-step, after the dropout draws
    class LossWithCtrlCInStep3(PaddedSmoothedCrossEntropyLoss):
        def of_output(self, output, labels):
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return super().of_output(output, labels)

    def run(work_dir, loss_fn=None, resume=False):
        return interrupted_run(
            tiny_model(tokenizer, dropout=0.3),
            ds,
            cfg,
            work_dir,
            resume=resume,
            checkpoint_every=100,
            loss_fn=loss_fn,
        )

    whole, _ = run(tmp_path / "a")
    first, trainer = run(tmp_path / "b", loss_fn=LossWithCtrlCInStep3(tokenizer.pad_id))
    # step 3 finished, then the interrupt
    assert trainer.progress.step == 3 and sorted(first) == [1, 2, 3]
    assert [int(p.stem[-7:]) for p in list_checkpoints(tmp_path / "b")] == [3]
    second, _ = run(tmp_path / "b", resume=True)
    # the resumed run is the uninterrupted one, exactly (as above)
    assert {**first, **second} == whole


def test_nan_loss_stops_the_run(tokenizer, corpus):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    model = tiny_model(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        model,
        ds,
        TrainConfig(batch_size=4, max_steps=3),
        device="cpu",
        loss_fn=NaNLoss(tokenizer.pad_id),
    )
    with pytest.raises(
        TrainingDiverged, match="NaN or infinite by step 1: training diverged"
    ):
        trainer.train()
    # no step taken on garbage
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, 5)
    write_checkpoint({"w": torch.ones(3)}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint({"w": torch.zeros(3)}, path)
    # the last good checkpoint survives
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    # no temporary file left
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_corrupt_and_mismatched_checkpoints(tokenizer, corpus, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or not an lmtut checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    small = Trainer(
        tiny_model(tokenizer), ds, TrainConfig(batch_size=4, max_steps=1), device="cpu"
    )
    other = TransformerLM(
        TransformerLMConfig(
            vocab_size=tokenizer.vocab_size,
            d_model=32,
            num_layers=1,
            num_attn_heads=2,
            d_inner=32,
            max_sequence_length=16,
        )
    )
    bigger = Trainer(other, ds, TrainConfig(batch_size=4, max_steps=1), device="cpu")
    with pytest.raises(CheckpointError, match="small.pt does not fit this model"):
        bigger.checkpointer.restore(small.checkpointer.snapshot(), "small.pt")


# ------------------------------------------------------------------------ command lines


def test_train_evaluate_generate_cli(corpus, tmp_path, capsys):
    work = tmp_path / "run"
    args = TINY + [
        "--data_dir",
        str(corpus),
        "--work_dir",
        str(work),
        "--max_steps",
        "6",
    ]
    assert train_cli.main(args) == 0
    assert "valid perplexity" in capsys.readouterr().out
    assert {p.name for p in work.iterdir()} == {
        "config.json",
        "metrics.jsonl",
        "tensorboard",
        "checkpoints",
        "results.json",
    }
    results = json.loads((work / "results.json").read_text())
    for key in (
        "valid_ppl",
        "test_ppl",
        "steps",
        "tokens",
        "tokens_per_s",
        "wall_time_s",
        "device",
        "torch",
    ):
        assert key in results
    # a 30-word corpus: far below the vocabulary size
    assert results["steps"] == 6 and results["test_ppl"] < 30
    records = [
        json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "valid_ppl" in r] == [4, 6]
    assert list((work / "tensorboard").iterdir())  # event files

    # checkpoints there and no --resume: refuse rather than overwrite
    assert train_cli.main(args) == 1
    assert "pass --resume" in capsys.readouterr().err
    # config.json fills in
    assert (
        train_cli.main(["--work_dir", str(work), "--resume", "--max_steps", "8"]) == 0
    )
    assert json.loads((work / "results.json").read_text())["steps"] == 8
    records = [
        json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()
    ]
    # each step once across the resume
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]
    assert json.loads((work / "config.json").read_text())["train"]["max_steps"] == 8
    capsys.readouterr()

    ckpt = str(list_checkpoints(work)[-1])
    assert evaluate_cli.main([ckpt, "--split", "valid", "--data_dir", str(corpus)]) == 0
    out = capsys.readouterr().out
    valid_ppl = json.loads((work / "results.json").read_text())["valid_ppl"]
    # Printed with 2 decimals: up to 0.005 off (more than rel 1e-4 of a perplexity below
    # 50). The number itself is the run's own score (same weights, windows, batches
    # and device), summed in another grouping: 1e-6 for a GPU that reorders a sum.
    assert out.startswith("valid perplexity")
    assert abs(float(out.split()[2]) - valid_ppl) <= 0.005 + 1e-6 * valid_ppl
    assert generate_cli.main([ckpt, "--prompt", "the n1", "--max_tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the n1 ")
    (tmp_path / "junk.pt").write_text("junk")
    assert evaluate_cli.main([str(tmp_path / "junk.pt")]) == 1
    assert "error: cannot read checkpoint" in capsys.readouterr().err


def test_adaptive_softmax_trains_and_evaluates(tokenizer, corpus):
    ds = LanguageModelingDataset(
        tokenizer, corpus / "train.txt", max_sequence_length=16
    )
    valid = LanguageModelingDataset(
        tokenizer, corpus / "valid.txt", max_sequence_length=16, batch_step=4
    )
    torch.manual_seed(0)
    model = TransformerLM(
        TransformerLMConfig(
            vocab_size=tokenizer.vocab_size,
            d_model=16,
            num_layers=1,
            num_attn_heads=2,
            d_inner=32,
            max_sequence_length=16,
            dropout=0.0,
            softmax="adaptive",
            tie_weights=False,
            adaptive_cutoffs=(8, 16),
        )
    )
    before = evaluate_perplexity(model, valid)[1]
    rec = Recorder()
    Trainer(
        model,
        ds,
        TrainConfig(batch_size=8, max_steps=40, lr=1e-2, precision="amp-bf16"),
        callbacks=[rec],
        device="cpu",
    ).train()
    losses = list(rec.losses.values())
    after = evaluate_perplexity(model, valid)[1]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5 and after < before / 2, (
        before,
        after,
    )
    model.eval()
    ids, _, labels = next(iter(LanguageModelingDataLayer(valid, 4)))
    # the whole distribution agrees
    full = model(ids).log_probs.gather(-1, labels[..., None]).squeeze(-1)
    # with the targets' (fp32: the same softmaxes, a tail's projection on fewer rows,
    # another blocking, as on AVX-512: a few 2^-24 of log-probabilities below ~8)
    assert torch.allclose(full, model(ids, targets=labels).target_log_probs, atol=1e-5)
