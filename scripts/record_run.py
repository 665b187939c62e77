"""Train with ``python -m lmtut.train`` and keep the run's small files for the book.

    python scripts/record_run.py cpu-demo -- --preset cpu-demo

runs ``python -m lmtut.train --preset cpu-demo --work_dir runs/cpu-demo``, then copies
``results.json``, ``metrics.jsonl`` and ``config.json`` (no checkpoints, no events) and
the exact command into ``results/runs/NAME/``, and writes ``samples.txt``: a few
continuations sampled from the final checkpoint with ``lmtut.generate`` (fixed prompts
and seed), so that the book can show what the run writes without committing a
checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lmtut.checkpoint import list_checkpoints  # noqa: E402

PROMPTS = ("The game", "In 1998 , the", "The river", "He was born in")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the run's name: runs/NAME and results/runs/NAME")
    parser.add_argument(
        "train_args", nargs=argparse.REMAINDER, help="-- then lmtut.train's arguments"
    )
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    command = [
        "python",
        "-m",
        "lmtut.train",
        *train_args,
        "--work_dir",
        f"runs/{args.name}",
    ]
    done = subprocess.run([sys.executable, *command[1:]], cwd=ROOT)
    if done.returncode:
        return done.returncode
    keep = ROOT / "results" / "runs" / args.name
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "metrics.jsonl", "config.json"):
        shutil.copy2(ROOT / "runs" / args.name / name, keep / name)
    (keep / "command.txt").write_text(shlex.join(command) + "\n")
    checkpoint = list_checkpoints(ROOT / "runs" / args.name)[-1]
    samples = []
    for prompt in PROMPTS:
        sample = [
            sys.executable,
            "-m",
            "lmtut.generate",
            str(checkpoint),
            "--prompt",
            prompt,
            "--max_tokens",
            "30",
            "--temperature",
            "0.8",
            "--top_k",
            "40",
            "--seed",
            "0",
        ]
        out = subprocess.run(
            sample, cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        samples.append(out)
    (keep / "samples.txt").write_text(
        f"# {len(PROMPTS)} samples from {checkpoint.name}: python -m lmtut.generate "
        "CHECKPOINT --prompt PROMPT "
        "--max_tokens 30 --temperature 0.8 --top_k 40 --seed 0\n\n"
        + "\n\n".join(samples)
        + "\n"
    )
    print(f"kept {keep.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
