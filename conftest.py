"""Test configuration shared by the unit tests and by ``pytest --nbval`` (notebook
kernels inherit os.environ).

When no mirror is set and the verified copy of WikiText-2 lies in
``../shared/data/wikitext-2`` (as on the maintainers' machines and in CI), the data code
is pointed there, so a bare ``pytest`` needs no network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_MIRROR = ROOT.parent / "shared" / "data" / "wikitext-2"

if "LMTUT_WIKITEXT2_URL" not in os.environ and SHARED_MIRROR.is_dir():
    os.environ["LMTUT_WIKITEXT2_URL"] = str(SHARED_MIRROR)


@pytest.fixture(scope="session")
def wikitext2_dir() -> Path:
    """The verified WikiText-2 folder (downloaded from the mirror into the data root
    once)."""
    from lmtut import download_wikitext2

    return download_wikitext2(quiet=True)
