"""Chapter 6: a run, from its configuration to a trained and evaluated model, in the functions that
``python -m lmtut.train`` calls and that the chapters call too.

    config = make_config("cpu-demo")                        # lmtut.recipes
    corpus, tokenizer = prepare(config)                     # download, vocabulary: once per run
    datasets = build_datasets(config, corpus, tokenizer)    # train, valid and test windows
    model = build_model(config, tokenizer)                  # seeded: the same weights every time
    trainer = build_trainer(config, model, datasets)        # optimizer, schedule, callbacks, work dir
    trainer.train()

:func:`run` does all of this, then measures test perplexity (with the averaged weights, when the run averages them)
and writes ``config.json`` and ``results.json``;
:func:`load_for_inference` gives a checkpoint's model and tokenizer back for evaluation and sampling.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lmtut.callbacks import (Callback, CheckpointCallback, EvaluatorCallback, MetricsWriterCallback,
                             SimpleLossLoggerCallback)
from lmtut.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from lmtut.corpus import download_wikitext2
from lmtut.datasets import LanguageModelDataDesc, LanguageModelingDataset, prepare_corpus, split_dataset
from lmtut.device import default_device, describe_device
from lmtut.distributed import barrier, init_distributed
from lmtut.model import TransformerLM
from lmtut.perplexity import evaluate_perplexity
from lmtut.provenance import provenance
from lmtut.recipes import RunConfig
from lmtut.seed import seed_everything
from lmtut.tokenizer import WordTokenizer
from lmtut.trainer import TrainConfig, Trainer

SPLITS = ("train", "valid", "test")


def prepare(config: RunConfig, quiet: bool = False) -> tuple[LanguageModelDataDesc, WordTokenizer]:
    """The run's corpus (downloaded when ``data_dir`` is not set) and its word tokenizer."""
    data_dir = config.data.data_dir or download_wikitext2(quiet=quiet)
    corpus = prepare_corpus(data_dir, config.data.do_lower_case, config.data.dataset_name)
    return corpus, WordTokenizer(corpus.vocab_file)


def build_datasets(config: RunConfig, corpus: LanguageModelDataDesc, tokenizer: WordTokenizer,
                   eval_tokens: int | None = None) -> dict[str, LanguageModelingDataset]:
    """Training windows, and ``predict_last_k`` windows over valid and test (their first ``eval_tokens`` only,
    when given: a CPU chapter's budget).

    With ``train_eval_tokens`` set, ``"train_eval"`` holds ``predict_last_k`` windows over the training split's
    first tokens, scored like validation: the training perplexity that chapter 7 draws beside the validation one.
    """
    L, k = config.model.max_sequence_length, config.data.predict_last_k
    datasets = {split: split_dataset(corpus, tokenizer, split, L, None if split == "train" else k,
                                     None if split == "train" else eval_tokens) for split in SPLITS}
    if config.train.train_eval_tokens:
        first = datasets["train"].ids[1 : 1 + config.train.train_eval_tokens]  # ids[0] is the stream's <eos>
        datasets["train_eval"] = LanguageModelingDataset(tokenizer, first, L, k)
    return datasets


def build_model(config: RunConfig, tokenizer: WordTokenizer) -> TransformerLM:
    """The run's model for this tokenizer's vocabulary, its weights drawn after seeding with the run's seed."""
    seed_everything(config.train.seed)
    return TransformerLM(config.model.with_vocab(tokenizer.vocab_size))


def standard_callbacks(config: TrainConfig, valid: LanguageModelingDataset | None,
                       show_bar: bool = True) -> list[Callback]:
    """The loss logger, the evaluator (when there is a validation set), checkpoints and the metrics files."""
    callbacks: list[Callback] = [SimpleLossLoggerCallback(config.log_every, show_bar)]
    if valid is not None:
        callbacks.append(EvaluatorCallback(valid, config.eval_every, config.eval_batch_size))
    return callbacks + [CheckpointCallback(config.checkpoint_every, config.keep_checkpoints), MetricsWriterCallback()]


def build_trainer(config: RunConfig, model: TransformerLM, datasets: dict[str, LanguageModelingDataset],
                  device: torch.device | None = None, show_bar: bool = True) -> Trainer:
    """A Trainer over the training windows, with the standard callbacks, writing to ``config.work_dir``.

    Checkpoints carry the run's config and vocabulary, so that :func:`load_for_inference` needs nothing else.
    With ``train_eval_tokens`` set (and a ``"train_eval"`` dataset), a second evaluator logs ``train_ppl``.
    """
    tokenizer = datasets["train"].tokenizer
    callbacks = standard_callbacks(config.train, datasets.get("valid"), show_bar)
    if "train_eval" in datasets:  # the training slice, scored at each validation (train_ppl)
        callbacks.append(EvaluatorCallback(datasets["train_eval"], config.train.eval_every,
                                           config.train.eval_batch_size, name="train"))
    return Trainer(model, datasets["train"], config.train, callbacks=callbacks, work_dir=config.work_dir,
                   device=device, extra_state={"run_config": config.to_dict(), "model_config": asdict(model.config),
                                               "vocab": tokenizer.id_to_token})


def run(config: RunConfig, resume: bool = False, show_bar: bool = True) -> dict[str, Any] | None:
    """Train as ``config`` says, write the work dir, return the results (None on ranks other than 0)."""
    work_dir = Path(config.work_dir)
    if list_checkpoints(work_dir) and not resume:
        raise CheckpointError(f"{work_dir} already holds checkpoints; pass --resume to continue, "
                              "or choose another --work_dir")
    world, device = init_distributed()
    if world.is_main:  # rank 0 prepares the corpus first, so that ranks never write the same files at once
        corpus, tokenizer = prepare(config)
    barrier()
    if not world.is_main:
        corpus, tokenizer = prepare(config, quiet=True)
    datasets = build_datasets(config, corpus, tokenizer)
    model = build_model(config, tokenizer)
    if world.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    trainer = build_trainer(config, model, datasets, device, show_bar)
    if world.is_main:
        print(f"device {device} ({describe_device(device)}), {world.world_size} process(es), precision "
              f"{trainer.precision.name}" + (", TF32 matmuls on" if trainer.tf32 else ""), file=sys.stderr)
    start = time.perf_counter()
    if resume and trainer.resume() and world.is_main:
        print(f"resumed from step {trainer.step} of {trainer.total_steps}", file=sys.stderr)
    trainer.train()
    if not world.is_main:
        return None
    evaluators = {cb.name: cb.last for cb in trainer.callbacks if isinstance(cb, EvaluatorCallback)}
    evaluator = evaluators["valid"]
    # the averaged weights when the run averages them (trainer.eval_model), as in every evaluation during training
    test_nll, test_ppl = evaluate_perplexity(trainer.eval_model, datasets["test"], config.train.eval_batch_size)
    results = {
        "valid_ppl": evaluator["valid_ppl"], "valid_nll": evaluator["valid_nll"],
        **({"train_ppl": evaluators["train"]["train_ppl"]} if "train" in evaluators else {}),
        "test_ppl": test_ppl, "test_nll": test_nll, "steps": trainer.step, "tokens": trainer.tokens_seen,
        "tokens_per_s": trainer.tokens_seen / max(trainer.train_seconds, 1e-9),
        "wall_time_s": time.perf_counter() - start,  # of this invocation, evaluation included
        **provenance(device), "world_size": world.world_size,
        "precision": trainer.precision.name, "tf32": trainer.tf32, "skipped_steps": trainer.skipped_steps,
        "parameters": model.parameter_counts()["total"],
        "predict_last_k": config.data.predict_last_k, "preset": config.preset,
    }
    (work_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def load_for_inference(path: str | Path,
                       device: torch.device | None = None) -> tuple[TransformerLM, WordTokenizer, RunConfig]:
    """A checkpoint's model (eval mode, on ``device`` or the default one), its tokenizer and its run config.

    A run that averaged its weights (``ema_decay``) is loaded with its averaged weights: the model it evaluated.
    """
    state = load_checkpoint(path)
    for key in ("run_config", "vocab", "model"):
        if key not in state:
            raise CheckpointError(f"{path} lacks '{key}': not a checkpoint written by lmtut.train")
    config = RunConfig.from_dict(state["run_config"])
    tokenizer = WordTokenizer(tokens=state["vocab"])
    model = TransformerLM(config.model.with_vocab(tokenizer.vocab_size))
    try:
        model.load_state_dict(state["ema"]["model"] if "ema" in state else state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit its own config: {str(e).splitlines()[0]}") from None
    return model.to(device or default_device()).eval(), tokenizer, config
