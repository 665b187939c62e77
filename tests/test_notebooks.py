"""The notebooks as files: each opens with the same setup cell, which finds or installs
lmtut, and says what to run instead of failing with a traceback where it cannot."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import set_repository  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def first_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def first_code_tags(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return next(c for c in cells if c["cell_type"] == "code")["metadata"].get(
        "tags", []
    )


def run_in_ipython(
    cell: str, cwd: Path, hide: tuple[str, ...]
) -> subprocess.CompletedProcess:
    """Run ``cell`` in a fresh IPython shell where the modules ``hide`` cannot be
    found."""
    script = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in hide)
        + "from IPython.core.interactiveshell import InteractiveShell\n"
        + f"result = InteractiveShell.instance().run_cell({cell!r})\n"
        + "print('RESULT', type(result.error_in_exec).__name__, sys.path[0])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_notebook_opens_with_the_same_setup_cell():
    cells = {path.name: first_code_cell(path) for path in NOTEBOOKS}
    assert len(set(cells.values())) == 1, sorted(cells)
    # and the rendered page folds it away in every chapter (a new one too)
    tags = {path.name: first_code_tags(path) for path in NOTEBOOKS}
    assert all("hide-input" in t for t in tags.values()), tags


def test_the_repository_address_has_one_source():
    # pyproject.toml's Repository; scripts/set_repository.py writes the others from it
    address = set_repository.repository()
    book = re.search(
        r"repository:\s*\n\s*url:\s*(\S+)", (ROOT / "_config.yml").read_text()
    ).group(1)
    assert book == address
    # Colab installs from the book's repository
    for path in NOTEBOOKS:
        assert f'REPOSITORY = "{address}"' in first_code_cell(path), path.name


def test_set_repository_rewrites_a_notebooks_setup_cell(tmp_path):
    copy = tmp_path / NOTEBOOKS[0].name
    copy.write_text(NOTEBOOKS[0].read_text())
    assert set_repository.rewrite_notebook(copy, "https://example.org/fork/lmtut")
    assert 'REPOSITORY = "https://example.org/fork/lmtut"' in first_code_cell(copy)
    assert not set_repository.rewrite_notebook(copy, "https://example.org/fork/lmtut")


@pytest.mark.parametrize("hide", [("lmtut",), ("torch", "lmtut")])
def test_alone_and_without_lmtut_the_setup_cell_prints_the_command(tmp_path, hide):
    done = run_in_ipython(first_code_cell(NOTEBOOKS[0]), tmp_path, hide)
    assert (
        "bash scripts/setup.sh" in done.stdout
        and "pip install git+https://" in done.stdout
    )
    assert "RESULT SetupNeeded" in done.stdout
    # no traceback shown
    assert "Traceback" not in done.stdout + done.stderr and "---" not in done.stdout


def test_in_the_checkout_the_setup_cell_uses_the_checkouts_package():
    done = run_in_ipython(first_code_cell(NOTEBOOKS[0]), ROOT / "notebooks", ("lmtut",))
    assert f"RESULT NoneType {ROOT}" in done.stdout, done.stdout + done.stderr
