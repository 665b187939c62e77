"""A Sphinx extension of the book: each page loads every script once.

sphinx-thebe 0.3 (pulled in by Jupyter Book 1.x) registers its inline ``const THEBE_JS_URL = ...`` script twice
under Sphinx 7, and a browser then stops with "Identifier 'THEBE_JS_URL' has already been declared". This drops
the repeated entries from each page's script list before the page is written.
"""

from __future__ import annotations


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        # an inline script's file name is None or "" depending on who added it: the same script either way
        key = (getattr(script, "filename", str(script)) or "", repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    if "script_files" in context:
        context["script_files"][:] = unique


def setup(app):
    # early: Sphinx stops calling html-page-context handlers at the first that returns a template name
    app.connect("html-page-context", drop_repeated_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
