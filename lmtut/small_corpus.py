"""Chapter 8: a smaller WikiText-2, to watch over-fitting on a CPU in seconds.

``small_corpus(source, target, fraction=0.1)`` keeps the first whole articles of the training split, up to about
``fraction`` of its tokens, and the full validation and test splits. The folder is a corpus like any other:
``prepare_corpus(target)`` builds *its* vocabulary from *its* training split, so that a word the small training
split never shows is ``<unk>`` in validation too, as WikiText-2 itself was built from its own training text
(Merity et al., 2016). Keeping the big split's vocabulary instead would let the model learn only that the missing
words never occur: validation perplexity would then rise on them alone, whatever the regularization.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lmtut.corpus import is_article_title
from lmtut.files import atomic_write_text


def first_articles(lines: list[str], fraction: float) -> list[str]:
    """The lines of the first whole articles that hold at least ``fraction`` of the tokens (``<eos>`` counted)."""
    total = sum(len(line.split()) + 1 for line in lines)
    kept = 0
    for i, line in enumerate(lines):
        if kept >= fraction * total and is_article_title(lines, i):
            return lines[:i]
        kept += len(line.split()) + 1
    return lines


def small_corpus(source: str | os.PathLike, target: str | os.PathLike, fraction: float = 0.1) -> Path:
    """Write ``target/train.txt`` (the first articles of ``source``'s, about ``fraction`` of its tokens) and copies
    of ``valid.txt`` and ``test.txt``; return ``target``, ready for :func:`lmtut.prepare_corpus`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    source, target = Path(source), Path(target)
    lines = (source / "train.txt").read_text(encoding="utf-8").splitlines()
    atomic_write_text(target / "train.txt", "\n".join(first_articles(lines, fraction)) + "\n")
    for split in ("valid", "test"):
        shutil.copyfile(source / f"{split}.txt", target / f"{split}.txt")
    return target
