"""The code on the page: chapters show the package's own source next to the prose that explains it."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any


class Source:
    """Source code that a notebook shows as a highlighted block (``_repr_markdown_``) and a terminal as text."""

    def __init__(self, name: str, code: str):
        self.name, self.code = name, code

    def _repr_markdown_(self) -> str:
        return f"`{self.name}`:\n\n```python\n{self.code}```"

    def __repr__(self) -> str:
        return f"# {self.name}\n{self.code}"


def show_source(obj: Any) -> Source:
    """The source of a function, method or class of lmtut, as it runs (``inspect.getsource``)."""
    return Source(f"{obj.__module__}.{obj.__qualname__}", textwrap.dedent(inspect.getsource(obj)))
