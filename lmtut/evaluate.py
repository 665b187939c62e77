"""Chapters 6 and 9: ``python -m lmtut.evaluate CHECKPOINT`` (or ``lmtut-evaluate``):
the perplexity of a checkpoint, static, calibrated, and adapted at test time.

    python -m lmtut.evaluate runs/cpu-demo/checkpoints/ckpt-step0000500.pt --split test
    python -m lmtut.evaluate CKPT --split test --predict_last_k K
    python -m lmtut.evaluate CKPT --split test --cache --dynamic_eval
        --calibrate_temperature --json adapted.json

``--cache`` adds the neural cache of Grave et al. (2017) (``lmtut.adapt.neural_cache``),
``--dynamic_eval`` dynamic evaluation (Krause et al., 2018; ``lmtut.adapt.dynamic``),
``--calibrate_temperature`` one softmax temperature (``lmtut.adapt.calibration``). Their
hyperparameters are chosen on the validation split (a flag given several values is a
grid searched there; ``--tune_tokens`` tunes on valid's first tokens only) and then
applied unchanged to ``--split``. The static figures, the calibrated ones and the ones
adapted at test time are printed and written (``--json``) apart, under their own keys:
an adapted perplexity is not a static one.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from lmtut.adapt import (
    ADAPTED,
    DYNAMIC_DEFAULTS,
    DynamicSettings,
    adapt_dynamically,
    adapt_with_neural_cache,
    calibrate_temperature,
)
from lmtut.adapt.dynamic import RULES
from lmtut.adapt.neural_cache import LAMBDAS, THETAS, check_cache_args
from lmtut.checkpoint import CheckpointError
from lmtut.corpus import DataError
from lmtut.datasets import split_dataset
from lmtut.experiment import load_for_inference, prepare
from lmtut.runtime import (
    PRECISIONS,
    DeviceError,
    atomic_write_json,
    model_device,
    provenance,
)
from lmtut.scoring import score_stream


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lmtut.evaluate",
        description="Perplexity "
        "of a checkpoint: "
        "static, calibrated, and adapted at test time "
        "(tuned on valid).",
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--split", choices=["train", "valid", "test"], default="test")
    parser.add_argument(
        "--predict_last_k",
        "--predict-last-k",
        type=int,
        default=None,
        help="score the last K positions of windows sliding by K "
        "(default: the run's); dynamic "
        "evaluation steps once per window, on its K tokens",
    )
    parser.add_argument(
        "--data_dir",
        "--data-dir",
        default=None,
        help="folder with the splits (default: the run's, else download)",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--precision",
        default="fp32",
        help=f"{', '.join(PRECISIONS)} or auto (lmtut.runtime)",
    )
    parser.add_argument(
        "--max_tokens",
        type=int,
        default=None,
        help="score only the first N tokens of each split",
    )
    parser.add_argument(
        "--tune_tokens",
        type=int,
        default=None,
        help="tune the adaptation on the first N tokens of valid "
        "(default: all that is scored)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars",
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the figures to this JSON file",
    )
    group = parser.add_argument_group("neural cache (Grave et al., 2017)")
    group.add_argument(
        "--cache", action="store_true", help="interpolate the model with a neural cache"
    )
    group.add_argument(
        "--cache_size",
        type=int,
        default=2000,
        help="how many past positions the cache holds",
    )
    group.add_argument(
        "--cache_theta",
        type=float,
        nargs="+",
        default=list(THETAS),
        help="flatness (grid)",
    )
    group.add_argument(
        "--cache_lambda",
        type=float,
        nargs="+",
        default=list(LAMBDAS),
        help="cache weight (grid)",
    )
    group = parser.add_argument_group("dynamic evaluation (Krause et al., 2018)")
    group.add_argument(
        "--dynamic_eval",
        action="store_true",
        help="score each window, then take a step on it",
    )
    group.add_argument(
        "--dynamic_rule",
        choices=RULES,
        default=None,
        help="sgd or rms (Krause et al.'s; default)",
    )
    group.add_argument(
        "--dynamic_lr",
        type=float,
        nargs="+",
        default=None,
        help="learning rate(s) (grid)",
    )
    group.add_argument(
        "--dynamic_decay",
        type=float,
        nargs="+",
        default=None,
        help="decay towards the trained weights (grid; default: "
        "lmtut.adapt.DYNAMIC_DEFAULTS, widened while the best lies on its edge)",
    )
    group.add_argument(
        "--dynamic_eps", type=float, default=1e-3, help="the rms rule's epsilon"
    )
    group.add_argument(
        "--dynamic_stat_batches",
        type=int,
        default=None,
        help="the rms rule's gradient statistics from the first N "
        "training batches only (default: "
        "the whole training split, as Krause et al.)",
    )
    group.add_argument(
        "--dynamic_control",
        action="store_true",
        help="also the control: as many steps, taken on training text, "
        "scored on --split",
    )
    group = parser.add_argument_group("temperature calibration (Guo et al., 2017)")
    group.add_argument(
        "--calibrate_temperature",
        action="store_true",
        help="fit one softmax temperature on valid",
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse contradictory or impossible flags with argparse's error (exit status
    2)."""
    given = [
        f"--{n}"
        for n in ("dynamic_rule", "dynamic_lr", "dynamic_decay")
        if getattr(args, n) is not None
    ]
    given += ["--dynamic_control"] * args.dynamic_control
    if given and not args.dynamic_eval:
        parser.error(f"{given[0]} needs --dynamic_eval")
    for name in ("max_tokens", "tune_tokens", "batch_size", "dynamic_stat_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer, got {value}")
    try:
        check_cache_args(args.cache_size, args.cache_theta, args.cache_lambda)
    except ValueError as e:
        parser.error(str(e))
    args.dynamic_rule = args.dynamic_rule or "rms"
    defaults = DYNAMIC_DEFAULTS[args.dynamic_rule]
    args.dynamic_lr = args.dynamic_lr or defaults["lr"]
    args.dynamic_decay = (
        args.dynamic_decay if args.dynamic_decay is not None else defaults["decay"]
    )
    if any(lr < 0 for lr in args.dynamic_lr) or any(
        not 0 <= d < 1 for d in args.dynamic_decay
    ):
        parser.error("--dynamic_lr must be >= 0 and --dynamic_decay in [0, 1)")


def adapting(args: argparse.Namespace) -> bool:
    return args.cache or args.dynamic_eval or args.calibrate_temperature


def load(args: argparse.Namespace):
    """The model, its run config, the windows of each split to score (valid first when
    anything is tuned), and the training windows when dynamic evaluation needs them (the
    rms rule's statistics, the control's steps)."""
    model, tokenizer, config = load_for_inference(args.checkpoint)
    k = args.predict_last_k or config.data.predict_last_k
    if args.data_dir:
        config = replace(config, data=replace(config.data, data_dir=args.data_dir))
    corpus, _ = prepare(config)  # the checkpoint's own tokenizer scores it
    splits = (
        list(dict.fromkeys(["valid", args.split])) if adapting(args) else [args.split]
    )
    L = config.model.max_sequence_length
    windows = {
        s: split_dataset(corpus, tokenizer, s, L, k, args.max_tokens) for s in splits
    }
    needs_train = args.dynamic_eval and (
        args.dynamic_rule == "rms" or args.dynamic_control
    )
    train = split_dataset(corpus, tokenizer, "train", L) if needs_train else None
    return model, config, k, windows, train


def dynamic_settings(args: argparse.Namespace) -> DynamicSettings:
    return DynamicSettings(
        rule=args.dynamic_rule,
        lrs=args.dynamic_lr,
        decays=args.dynamic_decay,
        eps=args.dynamic_eps,
        stat_batches=args.dynamic_stat_batches,
        batch_size=args.batch_size,
        precision=args.precision,
        show_bar=args.progress,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        model, config, k, windows, train = load(args)
        # the commit that runs, not the one checked out when it ends
        origin = provenance(model_device(model))
        streams = {
            s: score_stream(
                model,
                w,
                args.batch_size,
                args.precision,
                keep_hidden=args.cache or args.calibrate_temperature,
                show_bar=args.progress,
            )
            for s, w in windows.items()
        }
    except (
        CheckpointError,
        DataError,
        DeviceError,
        ValueError,
        FileNotFoundError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, stream in streams.items():
        print(
            f"{split} perplexity {stream.perplexity:.2f} (nll {stream.nll:.4f} "
            f"nats/token, {stream.num_tokens:,} "
            f"tokens, window {config.model.max_sequence_length}, predict_last_k {k})"
        )
    result: dict[str, Any] = {
        "command": "python -m lmtut.evaluate "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint": args.checkpoint,
        "window": config.model.max_sequence_length,
        "predict_last_k": k,
        "precision": args.precision,
        "max_tokens": args.max_tokens,
        "tune_tokens": args.tune_tokens,
        "static": {
            s: {"perplexity": st.perplexity, "nll": st.nll, "tokens": st.num_tokens}
            for s, st in streams.items()
        },
    }
    if args.calibrate_temperature:
        result["temperature calibration"] = calibrate_temperature(
            model, streams, args.tune_tokens, args.progress
        )
    adapted = {}
    if args.cache:
        adapted["neural cache"] = adapt_with_neural_cache(
            streams,
            args.cache_size,
            args.cache_theta,
            args.cache_lambda,
            args.tune_tokens,
            args.progress,
        )
    if args.dynamic_eval:
        control = args.split if args.dynamic_control else None
        adapted["dynamic evaluation"] = adapt_dynamically(
            model, windows, train, dynamic_settings(args), args.tune_tokens, control
        )
    if adapted:
        result[ADAPTED] = adapted
    if args.json:
        result.update(origin)
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
