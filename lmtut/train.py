"""Chapter 6: ``python -m lmtut.train``, the seed's ``transformer_lm.py`` rebuilt on the lmtut Trainer.

    python -m lmtut.train --preset cpu-demo --work_dir runs/cpu-demo
    python -m lmtut.train --preset gpu-base --work_dir runs/gpu-base
    python -m lmtut.train --work_dir runs/cpu-demo --resume          # continue an interrupted run
    python -m lmtut.train --preset gpu-base --precision auto          # mixed precision (chapter 7)
    torchrun --nproc_per_node=4 -m lmtut.train --preset gpu-base     # data parallel on 4 GPUs (chapter 8)

The work dir receives ``config.json``, ``metrics.jsonl``, TensorBoard events (``tensorboard/``), checkpoints
(``checkpoints/``) and ``results.json`` (valid and test perplexity, steps, tokens, tokens/s, wall time, device).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from lmtut.callbacks import CheckpointCallback, EvaluatorCallback, SimpleLossLoggerCallback
from lmtut.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from lmtut.data import DataError, download_wikitext2
from lmtut.datasets import LanguageModelDataDesc, LanguageModelingDataset
from lmtut.distributed import DistInfo, barrier, cleanup, init_distributed
from lmtut.evaluate import evaluate_perplexity
from lmtut.loss import PaddedSmoothedCrossEntropyLoss
from lmtut.model import TransformerLM
from lmtut.precision import O_LEVELS, resolve_precision
from lmtut.seed import seed_everything
from lmtut.tokenizer import WordTokenizer
from lmtut.trainer import TrainConfig, Trainer, TrainingDiverged, default_device

#: Named recipes; command-line arguments override them.
PRESETS: dict[str, dict[str, Any]] = {
    # A few minutes on a 2-core CPU: a small model trained on a step budget, never full epochs.
    "cpu-demo": dict(d_model=128, num_layers=2, num_attn_heads=4, d_inner=512, max_sequence_length=64,
                     predict_last_k=32, batch_size=32, dropout=0.1, label_smoothing=0.0, optimizer_kind="adamw",
                     lr=2e-3, weight_decay=0.01, lr_policy="cosine", lr_warmup_proportion=0.05, max_steps=500,
                     eval_freq=250, checkpoint_save_freq=100, loss_log_freq=25, precision="auto"),
    # One modern GPU, about 15 minutes (not yet measured on a GPU: see the README).
    "gpu-base": dict(d_model=512, num_layers=6, num_attn_heads=8, d_inner=2048, max_sequence_length=256,
                     predict_last_k=64, batch_size=32, dropout=0.3, label_smoothing=0.1, optimizer_kind="adamw",
                     lr=5e-4, weight_decay=0.1, beta2=0.98, lr_policy="cosine", lr_warmup_proportion=0.05,
                     num_epochs=20, eval_freq=1000, checkpoint_save_freq=1000, loss_log_freq=100, precision="auto",
                     vocab_multiple=128),
    # The seed tutorial's defaults; its 50,000-step cosine schedule now ends with the run.
    "nemo": dict(d_model=384, num_layers=12, num_attn_heads=6, d_inner=1536, max_sequence_length=256,
                 predict_last_k=16, batch_size=32, dropout=0.2, label_smoothing=0.1, optimizer_kind="novograd",
                 lr=0.002, beta1=0.95, beta2=0.25, weight_decay=0.0, lr_policy="cosine",
                 lr_warmup_proportion=0.02, max_steps=50_000, eval_freq=1000, checkpoint_save_freq=1000,
                 loss_log_freq=100),
}
DEFAULTS: dict[str, Any] = dict(
    dataset_name="wikitext-2", data_dir=None, do_lower_case=False, work_dir="runs/lm", seed=0,
    d_model=128, num_layers=2, num_attn_heads=4, d_inner=512, max_sequence_length=64, predict_last_k=32,
    dropout=0.1, embedding_dropout=None, attn_score_dropout=None, ffn_dropout=0.0, tie_weights=True,
    label_smoothing=0.0, batch_size=32, iter_per_step=1, num_epochs=1, max_steps=None, optimizer_kind="adamw",
    lr=1e-3, weight_decay=0.0, beta1=0.9, beta2=0.999, lr_policy="cosine", lr_warmup_proportion=0.05,
    clip_grad_norm=1.0, eval_freq=500, eval_batch_size=32, checkpoint_save_freq=500, keep_checkpoints=3,
    loss_log_freq=25, num_workers=0, precision="fp32", amp_opt_level=None, compile=False, vocab_multiple=8,
)

HELP = {
    "precision": "fp32, amp-fp16, amp-bf16 or auto (bf16 where supported, else fp16 on GPU; fp32 on a CPU without "
                 "native bf16); default fp32",
    "amp_opt_level": "the seed's Apex level, mapped onto --precision: "
                     + ", ".join(f"{k} = {v}" for k, v in O_LEVELS.items()),
    "compile": "torch.compile the model (true/false, default false)",
    "vocab_multiple": "pad the softmax layer's vocabulary to a multiple of this (the seed's 8; 64 or 128 suit GPU "
                      "matmul tiles); default 8",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmtut.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe; other arguments override it")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's last checkpoint")
    for name, default in DEFAULTS.items():
        if isinstance(default, bool):
            p.add_argument(f"--{name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                           help=f"true/false (default {default})")
        else:
            kind = type(default) if default is not None else (float if "dropout" in name else str)
            if name in ("max_steps",):
                kind = int
            p.add_argument(f"--{name}", type=kind, default=None, help=HELP.get(name, f"default {default}"))
    return p


def resolve_args(argv: list[str] | None) -> dict[str, Any]:
    """Defaults, then the preset, then the command line; with --resume, the saved config.json fills the gaps."""
    ns = parser().parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None and k not in ("preset", "resume")}
    config = dict(DEFAULTS)
    saved = Path(given.get("work_dir", DEFAULTS["work_dir"])) / "config.json"
    if ns.resume and saved.is_file():
        config.update(json.loads(saved.read_text()))
    if ns.preset:
        config.update(PRESETS[ns.preset])
        config["preset"] = ns.preset
    config.update(given)
    config["resume"] = ns.resume
    if config.get("amp_opt_level"):  # the seed's spelling wins when given
        config["precision"] = resolve_precision(config["amp_opt_level"], "cpu")
    return config


def model_from_config(config: dict[str, Any], vocab_size: int) -> TransformerLM:
    return TransformerLM(
        vocab_size, config["d_model"], config["num_layers"], config["num_attn_heads"], config["d_inner"],
        config["max_sequence_length"], dropout=config["dropout"], tie_weights=config["tie_weights"],
        attn_dropout=config["attn_score_dropout"], emb_dropout=config["embedding_dropout"],
        ffn_dropout=config["ffn_dropout"],
        padded_vocab_size=m * math.ceil(vocab_size / m) if (m := config.get("vocab_multiple", 8)) else None,
    )


def train_config(config: dict[str, Any], device: torch.device | None = None) -> TrainConfig:
    """The Trainer's knobs from the run's config. On a GPU the loss is read back only when it is logged."""
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in config.items() if k in names}
    sync_every = config["loss_log_freq"] if device is not None and device.type == "cuda" else 1
    return TrainConfig(**values, batches_per_step=config["iter_per_step"], sync_every=sync_every)


def split_dataset(tokenizer: WordTokenizer, config: dict[str, Any], split: str, batch_step: int | None,
                  data_dir: str | None = None) -> LanguageModelingDataset:
    """Windows over one split of the run's dataset (``batch_step=None``: training windows)."""
    desc = LanguageModelDataDesc(config["dataset_name"], data_dir or config.get("data_dir") or download_wikitext2(),
                                 config["do_lower_case"])
    path = {"train": desc.train_file, "valid": desc.eval_file, "test": desc.test_file}[split]
    return LanguageModelingDataset(tokenizer, path, config["max_sequence_length"], batch_step)


def load_for_inference(path: str | Path) -> tuple[TransformerLM, WordTokenizer, dict[str, Any]]:
    """A checkpoint's model (eval mode, on the default device), its tokenizer and its run config."""
    state = load_checkpoint(path)
    for key in ("run_config", "vocab", "model"):
        if key not in state:
            raise CheckpointError(f"{path} lacks '{key}': not a checkpoint written by lmtut.train")
    tokenizer = WordTokenizer(tokens=state["vocab"])
    model = model_from_config(state["run_config"], tokenizer.vocab_size)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit its own config: {str(e).splitlines()[0]}") from None
    return model.to(default_device()).eval(), tokenizer, state["run_config"]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except OSError:
        return None


def prepare_data(config: dict[str, Any], rank: DistInfo) -> tuple[str, WordTokenizer]:
    """Download and prepare the corpus (rank 0 first, so that ranks never write the same files at once)."""
    def prepare() -> tuple[str, WordTokenizer]:
        data_dir = config["data_dir"] or str(download_wikitext2(quiet=not rank.is_main))
        desc = LanguageModelDataDesc(config["dataset_name"], data_dir, config["do_lower_case"])
        return data_dir, WordTokenizer(desc.vocab_file)

    if rank.is_main:
        prepared = prepare()
    barrier()
    return prepared if rank.is_main else prepare()


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and the threads PyTorch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    threads = torch.get_num_threads()
    return f"{names[0] if names else platform.processor() or platform.machine()}, {threads} thread{'s' * (threads > 1)}"


def run(config: dict[str, Any], show_bar: bool = True) -> dict[str, Any] | None:
    """Train as ``config`` says, write the work dir, return the results (None on ranks other than 0)."""
    work_dir = Path(config["work_dir"])
    if list_checkpoints(work_dir) and not config["resume"]:
        raise CheckpointError(f"{work_dir} already holds checkpoints; pass --resume to continue, "
                              "or choose another --work_dir")
    rank, device = init_distributed()
    seed_everything(config["seed"])
    data_dir, tokenizer = prepare_data(config, rank)
    datasets = {split: split_dataset(tokenizer, config, split, None if split == "train" else config["predict_last_k"],
                                     data_dir) for split in ("train", "valid", "test")}
    model = model_from_config(config, tokenizer.vocab_size)
    saved = {k: v for k, v in config.items() if k != "resume"}
    if rank.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
    evaluator = EvaluatorCallback(datasets["valid"], config["eval_freq"], config["eval_batch_size"])
    trainer = Trainer(
        model, datasets["train"], train_config(config, device),
        loss_fn=PaddedSmoothedCrossEntropyLoss(tokenizer.pad_id, config["label_smoothing"]),
        callbacks=[SimpleLossLoggerCallback(config["loss_log_freq"], show_bar), evaluator,
                   CheckpointCallback(config["checkpoint_save_freq"], config["keep_checkpoints"])],
        work_dir=work_dir, device=device,
        extra_state={"run_config": saved, "model_config": asdict(model.config), "vocab": tokenizer.id_to_token},
    )
    if rank.is_main:
        print(f"device {device} ({describe_device(device)}), {rank.world_size} process(es), precision "
              f"{trainer.precision.name}" + (", TF32 matmuls on" if trainer.tf32 else ""), file=sys.stderr)
    start = time.perf_counter()
    if config["resume"] and trainer.resume() and rank.is_main:
        print(f"resumed from step {trainer.step} of {trainer.total_steps}", file=sys.stderr)
    trainer.train()
    if not rank.is_main:
        return None
    test_nll, test_ppl = evaluate_perplexity(trainer.model, datasets["test"], config["eval_batch_size"])
    results = {
        "valid_ppl": evaluator.last["valid_ppl"], "valid_nll": evaluator.last["valid_nll"],
        "test_ppl": test_ppl, "test_nll": test_nll, "steps": trainer.step, "tokens": trainer.tokens_seen,
        "tokens_per_s": trainer.tokens_seen / max(trainer.train_seconds, 1e-9),
        "wall_time_s": time.perf_counter() - start,  # of this invocation, evaluation included
        "device": str(device), "device_name": describe_device(device), "world_size": rank.world_size,
        "precision": trainer.precision.name, "tf32": trainer.tf32, "skipped_steps": trainer.skipped_steps,
        "torch": torch.__version__, "git_commit": git_commit(), "parameters": model.parameter_counts()["total"],
        "predict_last_k": config["predict_last_k"], "preset": config.get("preset"),
    }
    (work_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    config = resolve_args(argv)
    try:
        results = run(config)
    except (CheckpointError, DataError, TrainingDiverged, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with the same command and --resume (work dir {config['work_dir']})",
              file=sys.stderr)
        return 130
    finally:
        cleanup()
    if results is not None:
        print(f"valid perplexity {results['valid_ppl']:.2f}, test perplexity {results['test_ppl']:.2f} "
              f"({results['steps']} steps, {results['tokens_per_s']:,.0f} tokens/s, {results['wall_time_s']:.0f} s); "
              f"results in {Path(config['work_dir']) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
