"""Re-execute the chapter notebooks in place, the way ``pytest --nbval`` will re-run
them, and store outputs.

Run it after changing ``lmtut`` (``python scripts/execute_notebooks.py
[notebooks/03_*.ipynb ...]``), then check with ``pytest notebooks/`` and commit the
notebooks. Each notebook's execution time (the time its stored outputs took) is kept in
``results/notebooks/execution-times.json``, with the machine and commit. Like the tests,
it uses the current Python environment's kernel and points the data code at
``../shared/data/wikitext-2`` when that mirror exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from lmtut.runtime import (  # noqa: E402
    default_device,
    describe_device,
    git_commit,  # noqa: E402
)

TIMES = ROOT / "results" / "notebooks" / "execution-times.json"
SHARED_MIRROR = ROOT.parent / "shared" / "data" / "wikitext-2"


def strip_progress_widgets(nb) -> None:
    """Drop tqdm's widget outputs: without the widget state (random ids, a JavaScript
    runtime) the book could only show their first frame, "0%". Progress bars are for a
    live run; the cells print their results."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [
                o
                for o in cell.outputs
                if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})
            ]


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    resources = {"metadata": {"path": str(path.parent)}}
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources=resources
    ).execute()
    strip_progress_widgets(nb)
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb"
    )
    parser.add_argument(
        "--timeout", type=int, default=900, help="seconds a cell may take"
    )
    args = parser.parse_args()
    if "LMTUT_WIKITEXT2_URL" not in os.environ and SHARED_MIRROR.is_dir():
        os.environ["LMTUT_WIKITEXT2_URL"] = str(SHARED_MIRROR)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    times = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    for path in paths:
        seconds = execute(path.resolve(), args.timeout)
        print(f"{path.name}: {seconds:.1f} s", flush=True)
        times[path.name] = {
            "seconds": round(seconds, 1),
            "device_name": describe_device(default_device()),
            "torch": torch.__version__,
            "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        }
        TIMES.parent.mkdir(parents=True, exist_ok=True)
        TIMES.write_text(json.dumps(dict(sorted(times.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
