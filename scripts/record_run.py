"""Train with ``python -m lmtut.train`` and keep the run's small files for the Results chapter.

    python scripts/record_run.py cpu-demo -- --preset cpu-demo

runs ``python -m lmtut.train --preset cpu-demo --work_dir runs/cpu-demo``, then copies ``results.json``,
``metrics.jsonl`` and ``config.json`` (no checkpoints, no events) and the exact command into ``results/runs/NAME/``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="the run's name: runs/NAME and results/runs/NAME")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then lmtut.train's arguments")
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    command = ["python", "-m", "lmtut.train", *train_args, "--work_dir", f"runs/{args.name}"]
    done = subprocess.run([sys.executable, *command[1:]], cwd=ROOT)
    if done.returncode:
        return done.returncode
    keep = ROOT / "results" / "runs" / args.name
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "metrics.jsonl", "config.json"):
        shutil.copy2(ROOT / "runs" / args.name / name, keep / name)
    (keep / "command.txt").write_text(shlex.join(command) + "\n")
    print(f"kept {keep.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
