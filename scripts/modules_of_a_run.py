"""Which of lmtut's modules a run of ``python -m lmtut.train`` calls functions of.

    python scripts/modules_of_a_run.py -- --preset cpu-demo --max_steps 20
        --eval_every 10 --work_dir /tmp/run

runs ``lmtut.train.main`` with those arguments under ``sys.setprofile`` and lists, for
each lmtut module, how many of its functions were called. Module and class bodies (what
an import runs) are not counted: only calls of functions and methods, as a reader
following the run would open them.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import lmtut.train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "train_args", nargs=argparse.REMAINDER, help="-- then lmtut.train's arguments"
    )
    args = parser.parse_args()
    package = str(ROOT / "lmtut")
    called: dict[str, set[str]] = defaultdict(set)

    def profile(frame, event, arg):
        # a function's code is "optimized"; a module's or a class body's is not
        code = frame.f_code
        if (
            event == "call"
            and code.co_flags & inspect.CO_OPTIMIZED
            and code.co_filename.startswith(package)
        ):
            called[code.co_filename].add(code.co_qualname)

    sys.setprofile(profile)
    try:
        lmtut.train.main([a for a in args.train_args if a != "--"])
    finally:
        sys.setprofile(None)
    for path in sorted(called):
        print(f"{Path(path).relative_to(ROOT)}: {len(called[path])} functions")
    print(f"{len(called)} modules")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
