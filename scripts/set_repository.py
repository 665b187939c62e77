"""The book's publication address, in one place: ``pyproject.toml``'s
``[project.urls] Repository``. This script writes it into what is made from it.

    python scripts/set_repository.py  # rewrite from pyproject.toml
    python scripts/set_repository.py https://github.com/me/lmtut  # a fork

The address is where the book's repository is published: Jupyter Book's repository,
Binder and Colab buttons (``_config.yml``'s ``repository.url``) and every notebook's
setup cell (``REPOSITORY = "..."``, which ``pip install git+...`` uses in Colab) are
made from it. ``tests/test_notebooks.py`` checks that they agree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
URL_LINE = re.compile(r'^(Repository = ")([^"]*)(")$', re.M)
CONFIG_URL = re.compile(r"^(repository:\s*\n\s*url:\s*)(\S+)", re.M)
SETUP_URL = re.compile(r'^(REPOSITORY = ")([^"]*)(")$', re.M)


def repository() -> str:
    """The address that pyproject.toml holds."""
    return URL_LINE.search(PYPROJECT.read_text()).group(2)


def rewrite(path: Path, pattern: re.Pattern, url: str) -> bool:
    """Put ``url`` in the pattern's second group in ``path``; whether it changed."""
    text = path.read_text()
    new = pattern.sub(
        lambda m: m.group(1) + url + (m.group(3) if m.lastindex == 3 else ""), text
    )
    if new != text:
        path.write_text(new)
    return new != text


def rewrite_notebook(path: Path, url: str) -> bool:
    """The setup cell (the first code cell) of a notebook, with ``url``."""
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    source = "".join(cell["source"])
    new = SETUP_URL.sub(lambda m: m.group(1) + url + m.group(3), source)
    if new == source:
        return False
    cell["source"] = new.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="a new address (default: keep it)")
    args = parser.parse_args()
    if args.url:
        if not re.match(r"^https://\S+$", args.url):
            parser.error(f"give an https:// address, not {args.url!r}")
        rewrite(PYPROJECT, URL_LINE, args.url)
    url = repository()
    changed = [
        str(p.relative_to(ROOT))
        for p in [ROOT / "_config.yml"]
        if rewrite(p, CONFIG_URL, url)
    ]
    changed += [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        if rewrite_notebook(p, url)
    ]
    print(
        f"repository {url}: " + (", ".join(changed) if changed else "nothing to change")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
