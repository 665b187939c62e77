"""Writing files so that a crash never leaves a torn one: the one atomic-write helper of the package.

Downloads, vocabularies, lower-cased splits, checkpoints and rewritten metrics all go through
:func:`atomic_open`: the data goes to ``NAME.part`` beside the target, is flushed and ``fsync``-ed, optionally
checked, and only then renamed over ``NAME`` with ``os.replace`` (atomic on POSIX and Windows). An interrupted or
refused write deletes the ``.part`` file and leaves the old ``NAME``, if any, untouched.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb",
                check: Callable[[Path], None] | None = None) -> Iterator[IO[Any]]:
    """``with atomic_open(path, "w") as f: ...`` writes ``path`` all at once or not at all.

    ``check(part_path)`` runs on the finished, synced file before the rename; raising there refuses the file.
    """
    if not any(c in mode for c in "wx") or "+" in mode:
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with open(part, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(part)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, payload: Any, indent: int = 2) -> Path:
    """Write ``payload`` as indented JSON, with a final newline, to ``path`` atomically (its folder made)."""
    return atomic_write_text(path, json.dumps(payload, indent=indent) + "\n")
