"""Re-execute the chapter notebooks in place, the way ``pytest --nbval`` will re-run them, and store outputs.

Run it after changing ``lmtut`` (``python scripts/execute_notebooks.py [notebooks/03_*.ipynb ...]``), then
check with ``pytest notebooks/`` and commit the notebooks. Like the tests, it uses the current Python
environment's kernel and points the data code at ``../shared/data/wikitext-2`` when that mirror exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SHARED_MIRROR = ROOT.parent / "shared" / "data" / "wikitext-2"


def strip_progress_widgets(nb) -> None:
    """Drop tqdm's widget outputs: without the widget state (random ids, a JavaScript runtime) the book could only
    show their first frame, "0%". Progress bars are for a live run; the cells print their results."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    resources = {"metadata": {"path": str(path.parent)}}
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources=resources).execute()
    strip_progress_widgets(nb)
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--timeout", type=int, default=900, help="seconds a cell may take")
    args = parser.parse_args()
    if "LMTUT_WIKITEXT2_URL" not in os.environ and SHARED_MIRROR.is_dir():
        os.environ["LMTUT_WIKITEXT2_URL"] = str(SHARED_MIRROR)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path.resolve(), args.timeout):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
