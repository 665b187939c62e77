"""Chapter 6: ``python -m lmtut.train`` (or ``lmtut-train``), NeMo's
``transformer_lm.py`` as a command line.

    python -m lmtut.train --preset cpu-demo --work_dir runs/cpu-demo
    python -m lmtut.train --preset gpu-base --work_dir runs/gpu-base
    python -m lmtut.train --work_dir runs/cpu-demo --resume  # continue after Ctrl-C
    python -m lmtut.train --preset gpu-base --precision auto  # mixed precision (ch. 10)
    torchrun --nproc_per_node=4 -m lmtut.train --preset gpu-base  # 4 GPUs (chapter 11)

Every setting of ``lmtut.config.RunConfig`` is a flag, generated from its dataclass
field (type, default, and the comment beside the field as help); NeMo's flag names are
aliases. This module is the command line only: the run itself is
:func:`lmtut.experiment.run`. The work dir receives ``config.json``, ``metrics.jsonl``,
TensorBoard events (``tensorboard/``), checkpoints (``checkpoints/``) and
``results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable

from lmtut.checkpoint import CheckpointError
from lmtut.config import (
    DERIVED,
    NEMO_ALIASES,
    PRESETS,
    RETIRED_NEMO_FLAGS,
    SECTIONS,
    RunConfig,
    field_comments,
    make_config,
)
from lmtut.corpus import DataError
from lmtut.experiment import run
from lmtut.runtime import DeviceError, cleanup
from lmtut.trainer import TrainingDiverged

SENTINEL = object()  # a flag that was not given


def converter(annotation: Any) -> tuple[Callable[[str], Any], str]:
    """The argparse ``type`` of a field's annotation, and its metavar: ``int``,
    ``float``, ``str``, or ``X | None`` (then ``none`` gives None)."""
    args = typing.get_args(annotation)
    optional = (
        typing.get_origin(annotation) in (typing.Union, types.UnionType)
    ) and type(None) in args
    inner = next(a for a in args if a is not type(None)) if optional else annotation
    if typing.get_origin(inner) is tuple:  # tuple[int, ...]: comma-separated
        item = typing.get_args(inner)[0]
        parse, name = (
            (lambda text: tuple(item(x) for x in text.split(","))),
            f"{item.__name__.upper()},...",
        )
    else:
        parse, name = inner, inner.__name__.upper()

    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {name.lower()}" + (" or none" if optional else "")
            ) from None

    return convert, name + ("|none" if optional else "")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lmtut.train",
        description=__doc__.split("\n\n")[0],
        epilog="NeMo's flags "
        + ", ".join(f"--{a}" for a in NEMO_ALIASES)
        + " are accepted as aliases.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named recipe; other flags override it",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the work dir's last checkpoint",
    )
    p.add_argument(
        "--work_dir",
        default=SENTINEL,
        metavar="DIR",
        help=f"where the run writes (default {RunConfig.work_dir})",
    )
    aliases: dict[str, list[str]] = {}
    for alias, name in NEMO_ALIASES.items():
        aliases.setdefault(name, []).append(f"--{alias}")
    for section, cls in SECTIONS.items():
        group = p.add_argument_group(f"{section} settings ({cls.__name__})")
        hints, comments = typing.get_type_hints(cls), field_comments(cls)
        for f in fields(cls):
            if f.name in DERIVED:
                continue
            default = f.default if f.default is not MISSING else f.default_factory()
            help_text = (comments.get(f.name, "") + f" (default {default})").strip()
            flags = [f"--{f.name}", *aliases.get(f.name, [])]
            if hints[f.name] is bool:
                group.add_argument(
                    *flags,
                    dest=f.name,
                    action=argparse.BooleanOptionalAction,
                    default=SENTINEL,
                    help=help_text,
                )
            else:
                kind, metavar = converter(hints[f.name])
                group.add_argument(
                    *flags,
                    dest=f.name,
                    type=kind,
                    metavar=metavar,
                    default=SENTINEL,
                    help=help_text,
                )
    for name in RETIRED_NEMO_FLAGS:
        p.add_argument(f"--{name}", nargs="?", default=SENTINEL, help=argparse.SUPPRESS)
    return p


def config_from_args(argv: list[str] | None) -> tuple[RunConfig, bool]:
    """Defaults, then (with ``--resume``) the work dir's saved config.json, then the
    preset, then the flags."""
    p = parser()
    ns = p.parse_args(argv)
    given = {
        k: v
        for k, v in vars(ns).items()
        if v is not SENTINEL and k not in ("preset", "resume")
    }
    retired = [
        f"--{name}: {RETIRED_NEMO_FLAGS[name]}"
        for name in RETIRED_NEMO_FLAGS
        if name in given
    ]
    if retired:
        p.error("NeMo's flag is not used here; " + "; ".join(retired))
    saved = Path(given.get("work_dir", RunConfig.work_dir)) / "config.json"
    base = (
        RunConfig.from_dict(json.loads(saved.read_text()))
        if ns.resume and saved.is_file()
        else None
    )
    try:
        config = make_config(ns.preset, base=base, **given)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    return config, ns.resume


def main(argv: list[str] | None = None) -> int:
    config, resume = config_from_args(argv)
    try:
        results = run(config, resume=resume)
    except (
        CheckpointError,
        DataError,
        DeviceError,
        TrainingDiverged,
        ValueError,
        FileNotFoundError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: continue with the same command and --resume (work dir "
            f"{config.work_dir})",
            file=sys.stderr,
        )
        return 130
    finally:
        cleanup()
    if results is not None:
        print(
            f"valid perplexity {results.valid_ppl:.2f}, test perplexity "
            f"{results.test_ppl:.2f} "
            f"({results.steps} steps, {results.tokens_per_s:,.0f} tokens/s, "
            f"{results.wall_time_s:.0f} s); "
            f"results in {Path(config.work_dir) / 'results.json'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
