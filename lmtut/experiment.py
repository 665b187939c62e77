"""A run from its config (chapter 6): prepare the data, build datasets, model and
trainer, train, evaluate and load for inference; the short runs of chapters 3 to 5
(:func:`quick_train`) and one variant of a recipe trained and scored
(:func:`train_variant`), which the comparison scripts and chapters 7 and 8 use.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmtut.callbacks import Callback, MetricsWriterCallback, SimpleLossLoggerCallback
from lmtut.checkpoint import (
    CheckpointError,
    RunInfo,
    TrainingCheckpoint,
    list_checkpoints,
    load_weights,
)
from lmtut.config import RunConfig
from lmtut.corpus import download_wikitext2
from lmtut.datasets import (
    LanguageModelDataDesc,
    LanguageModelingDataset,
    prepare_corpus,
    split_dataset,
)
from lmtut.loss import PaddedSmoothedCrossEntropyLoss
from lmtut.model import TransformerLM
from lmtut.runtime import (
    barrier,
    default_device,
    describe_device,
    init_distributed,
    model_device,
    provenance,
    seed_everything,
)
from lmtut.scoring import evaluate_perplexity
from lmtut.tokenizer import WordTokenizer
from lmtut.trainer import TrainConfig, Trainer, TrainResult

# --------------------------------------------------------------------------------------
# Chapter 6: a run, from its configuration to a trained and evaluated model, in the
# functions that ``python -m lmtut.train`` calls and that the chapters call too.
#
#     config = make_config("cpu-demo")  # lmtut.config
#     corpus, tokenizer = prepare(config)  # download, vocabulary: once per run
#     datasets = build_datasets(config, corpus, tokenizer)  # train, valid, test windows
#     model = build_model(config, tokenizer)  # seeded: the same weights every time
#     trainer = build_trainer(config, model, datasets)  # optimizer, callbacks, work dir
#     trained = trainer.train()  # steps, tokens, seconds, last evaluations
#
# :func:`run` does all of this, then measures test perplexity (with the averaged
# weights, when the run averages them) and writes ``config.json`` and ``results.json``;
# :func:`load_for_inference` gives a checkpoint's model and tokenizer back for
# evaluation and sampling.

SPLITS = ("train", "valid", "test")


def prepare(
    config: RunConfig, quiet: bool = False
) -> tuple[LanguageModelDataDesc, WordTokenizer]:
    """The run's corpus (downloaded when ``data_dir`` is not set) and its word
    tokenizer."""
    data_dir = config.data.data_dir or download_wikitext2(quiet=quiet)
    corpus = prepare_corpus(
        data_dir, config.data.do_lower_case, config.data.dataset_name
    )
    return corpus, WordTokenizer(corpus.vocab_file)


def build_datasets(
    config: RunConfig,
    corpus: LanguageModelDataDesc,
    tokenizer: WordTokenizer,
    eval_tokens: int | None = None,
) -> dict[str, LanguageModelingDataset]:
    """Training windows, and ``predict_last_k`` windows over valid and test (their first
    ``eval_tokens`` only, when given: a CPU chapter's budget).

    With ``train_eval_tokens`` set, ``"train_eval"`` holds ``predict_last_k`` windows
    over the training split's first tokens, scored like validation: the training
    perplexity that chapter 8 draws beside the validation one.
    """
    L, k = config.model.max_sequence_length, config.data.predict_last_k
    datasets = {
        split: split_dataset(
            corpus,
            tokenizer,
            split,
            L,
            None if split == "train" else k,
            None if split == "train" else eval_tokens,
        )
        for split in SPLITS
    }
    if config.train.train_eval_tokens:
        datasets["train_eval"] = datasets["train"].first(
            config.train.train_eval_tokens, batch_step=k
        )
    return datasets


def build_model(config: RunConfig, tokenizer: WordTokenizer) -> TransformerLM:
    """The run's model for this tokenizer's vocabulary, its weights drawn after seeding
    with the run's seed."""
    seed_everything(config.train.seed)
    return TransformerLM(config.model.with_vocab(tokenizer.vocab_size))


def standard_callbacks(config: RunConfig, show_bar: bool = True) -> list[Callback]:
    """What observes a run: the loss logger (a progress bar and loss records) and the
    metrics files."""
    return [
        SimpleLossLoggerCallback(config.train.log_every, show_bar),
        MetricsWriterCallback(config.work_dir),
    ]


def build_trainer(
    config: RunConfig,
    model: TransformerLM,
    datasets: dict[str, LanguageModelingDataset],
    device: torch.device | None = None,
    show_bar: bool = True,
) -> Trainer:
    """A Trainer over the training windows that evaluates ``valid`` (and ``train_eval``
    as ``train``, when there), with the standard callbacks, writing to
    ``config.work_dir``.

    Checkpoints carry the run's config and vocabulary, so that
    :func:`load_for_inference` needs nothing else.
    """
    names = {"valid": "valid", "train_eval": "train"}
    evaluated = {name: datasets[key] for key, name in names.items() if key in datasets}
    run_info = RunInfo(
        config.to_dict(), asdict(model.config), datasets["train"].tokenizer.id_to_token
    )
    return Trainer(
        model,
        datasets["train"],
        config.train,
        evaluated,
        callbacks=standard_callbacks(config, show_bar),
        work_dir=config.work_dir,
        device=device,
        run_info=run_info,
    )


@dataclass
class RunResult:
    """What a run measured (``results.json``): the last validation, test perplexity, and
    how it ran."""

    valid_ppl: float
    valid_nll: float
    test_ppl: float
    test_nll: float
    steps: int
    tokens: int
    tokens_per_s: float
    wall_time_s: float  # of this invocation, evaluation included
    device: str
    device_name: str
    torch: str
    git_commit: str | None
    world_size: int
    precision: str
    tf32: bool
    skipped_steps: int
    parameters: int
    predict_last_k: int
    preset: str | None
    # with train_eval_tokens: the training slice's perplexity
    train_ppl: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As ``results.json`` holds it (``train_ppl`` after ``valid_nll``, and only
        when measured)."""
        d = asdict(self)
        train_ppl = d.pop("train_ppl")
        if train_ppl is None:
            return d
        keys = list(d)
        at = keys.index("valid_nll") + 1
        return {
            **{k: d[k] for k in keys[:at]},
            "train_ppl": train_ppl,
            **{k: d[k] for k in keys[at:]},
        }


def run(
    config: RunConfig, resume: bool = False, show_bar: bool = True
) -> RunResult | None:
    """Train as ``config`` says, write the work dir, return the results (None on ranks
    other than 0)."""
    work_dir = Path(config.work_dir)
    if list_checkpoints(work_dir) and not resume:
        raise CheckpointError(
            f"{work_dir} already holds checkpoints; pass --resume to "
            "continue, "
            "or choose another --work_dir"
        )
    world, device = init_distributed()
    # the commit that runs, not the one checked out when it ends
    origin = provenance(device)
    # rank 0 prepares the corpus first, so that ranks never write the same files at once
    if world.is_main:
        corpus, tokenizer = prepare(config)
    barrier()
    if not world.is_main:
        corpus, tokenizer = prepare(config, quiet=True)
    datasets = build_datasets(config, corpus, tokenizer)
    if "valid" not in datasets:
        raise ValueError(
            "a run needs a validation split to report its validation perplexity"
        )
    model = build_model(config, tokenizer)
    if world.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(
            json.dumps(config.to_dict(), indent=2) + "\n"
        )
    trainer = build_trainer(config, model, datasets, device, show_bar)
    if world.is_main:
        print(
            f"device {device} ({describe_device(device)}), {world.world_size} "
            "process(es), precision "
            f"{trainer.precision.name}" + (", TF32 matmuls on" if trainer.tf32 else ""),
            file=sys.stderr,
        )
    start = time.perf_counter()
    if resume and trainer.resume() and world.is_main:
        print(
            f"resumed from step {trainer.progress.step} of {trainer.total_steps}",
            file=sys.stderr,
        )
    trained = trainer.train()
    if not world.is_main:
        return None
    valid, train = trained.evaluations["valid"], trained.evaluations.get("train")
    # the averaged weights when the run averages them (trainer.eval_model), as in every
    # evaluation during training
    test_nll, test_ppl = evaluate_perplexity(
        trainer.eval_model, datasets["test"], config.train.eval_batch_size
    )
    result = RunResult(
        valid_ppl=valid["valid_ppl"],
        valid_nll=valid["valid_nll"],
        test_ppl=test_ppl,
        test_nll=test_nll,
        steps=trained.steps,
        tokens=trained.tokens_seen,
        tokens_per_s=trained.tokens_per_s,
        wall_time_s=time.perf_counter() - start,
        **origin,
        world_size=world.world_size,
        precision=trainer.precision.name,
        tf32=trainer.tf32,
        skipped_steps=trained.skipped_steps,
        parameters=model.parameter_counts()["total"],
        predict_last_k=config.data.predict_last_k,
        preset=config.preset,
        train_ppl=train["train_ppl"] if train else None,
    )
    (work_dir / "results.json").write_text(
        json.dumps(result.to_dict(), indent=2) + "\n"
    )
    return result


def load_for_inference(
    path: str | Path, device: torch.device | None = None
) -> tuple[TransformerLM, WordTokenizer, RunConfig]:
    """A checkpoint's model (eval mode, on ``device`` or the default one), its tokenizer
    and its run config.

    A run that averaged its weights (``ema_decay``) is loaded with its averaged weights:
    the model it evaluated.
    """
    checkpoint = TrainingCheckpoint.read(path)
    if checkpoint.run_info is None:
        raise CheckpointError(
            f"{path} has no run config or vocabulary: not a "
            "checkpoint written by lmtut.train"
        )
    config = RunConfig.from_dict(checkpoint.run_info.run_config)
    tokenizer = WordTokenizer(tokens=checkpoint.run_info.vocab)
    model = TransformerLM(config.model.with_vocab(tokenizer.vocab_size))
    load_weights(model, checkpoint.weights(), str(path))
    return model.to(device or default_device()).eval(), tokenizer, config


# --------------------------------------------------------------------------------------
# Chapters 7 and 8, and the scripts that compare recipes over seeds: one variant of a
# recipe, trained and scored.


@dataclass(frozen=True)
class VariantRun:
    """One variant of a recipe after training: its model, what the run measured and its
    metrics records."""

    model: TransformerLM
    result: TrainResult
    # metrics.jsonl: loss records and every evaluation, in order
    metrics: list[dict[str, Any]]


def train_variant(
    config: RunConfig,
    corpus: LanguageModelDataDesc,
    tokenizer: WordTokenizer,
    eval_tokens: int | None = None,
    datasets: dict[str, LanguageModelingDataset] | None = None,
) -> VariantRun:
    """Train ``config`` (a recipe with the variant's overrides, from
    :func:`lmtut.make_config`) in a temporary work dir, without a progress bar, scoring
    the first ``eval_tokens`` of validation (or the ``datasets`` given)."""
    with tempfile.TemporaryDirectory(prefix="lmtut-variant-") as work:
        config = replace(config, work_dir=work)
        datasets = datasets or build_datasets(config, corpus, tokenizer, eval_tokens)
        model = build_model(config, tokenizer)
        result = build_trainer(config, model, datasets, show_bar=False).train()
        lines = (Path(work) / "metrics.jsonl").read_text().splitlines()
    return VariantRun(model, result, [json.loads(line) for line in lines])


# --------------------------------------------------------------------------------------
# Chapters 3 to 5: a short training run, for side-by-side experiments that fit a laptop
# CPU's budget.
#
# ``quick_train`` is chapter 6's ``Trainer`` with a short recipe: AdamW at a constant
# learning rate after a linear warmup, gradient clipping, a seeded shuffle, fp32, and
# validation perplexity measured the right way (unsmoothed, each scored token once)
# before the first step and every ``eval_every`` steps. It keeps no checkpoints.


class History(Callback):
    """Every step's training loss and every validation perplexity, as lists (the loss
    read back each step)."""

    def __init__(self):
        self.history: dict[str, list[float]] = {
            "step": [],
            "train_loss": [],
            "eval_step": [],
            "valid_ppl": [],
        }

    def on_step_end(self, record):
        self.history["step"].append(record.step)
        self.history["train_loss"].append(float(record.loss))

    def on_log(self, record):
        if "valid_ppl" in record:
            self.history["eval_step"].append(record["step"])
            self.history["valid_ppl"].append(record["valid_ppl"])


def quick_train(
    model: nn.Module,
    train: LanguageModelingDataset,
    valid: LanguageModelingDataset | None = None,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    warmup_steps: int = 10,
    weight_decay: float = 0.0,
    clip_grad_norm: float = 1.0,
    eval_every: int = 25,
    loss_fn: PaddedSmoothedCrossEntropyLoss | None = None,
    seed: int = 0,
    desc: str = "training",
) -> dict[str, list[float]]:
    """Train ``model`` for ``steps`` batches, where it is; return its history (step,
    train loss, validation perplexity at ``eval_step``, tokens per second).

    ``loss_fn`` defaults to the plain negative log-likelihood ignoring padding
    (``PaddedSmoothedCrossEntropyLoss`` without smoothing), for which the model scores
    the targets alone.
    """
    config = TrainConfig(
        batch_size=batch_size,
        max_steps=steps,
        lr=lr,
        lr_policy="constant",
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        clip_grad_norm=clip_grad_norm,
        eval_every=eval_every,
        eval_batch_size=batch_size,
        log_every=steps,
        seed=seed,
    )
    recorder = History()
    trainer = Trainer(
        model,
        train,
        config,
        {"valid": valid} if valid is not None else None,
        loss_fn,
        callbacks=[recorder, SimpleLossLoggerCallback(steps, desc=desc)],
        device=model_device(model),
    )
    trainer.evaluate()  # before the first step
    trained = trainer.train()
    return {**recorder.history, "tokens_per_s": [trained.tokens_per_s]}
