"""The rendered book, checked the way a reader meets it: built, served on 127.0.0.1, and
driven in headless Chromium.

The book is built into a temporary folder with warnings as errors. Every page is opened
in the system's Chromium (Debian's ``chromium``, driven by Playwright without a browser
download): no console errors, every image loaded, every internal link resolves (file and
anchor), math typeset by MathJax, an exercise's solution opens on a click, and the
search page finds "label smoothing". Screenshots of a few pages go to
``_build/screenshots/`` for a person to look at.

Without Chromium the browser test is skipped with a reason, unless
``LMTUT_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs Chromium) makes that a
failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    explicit = os.environ.get("LMTUT_CHROMIUM")
    if explicit:
        return explicit
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The book, freshly built with ``jupyter-book build -W`` (a warning fails the
    build)."""
    out = tmp_path_factory.mktemp("book")
    jupyter_book = (
        shutil.which("jupyter-book", path=str(Path(sys.executable).parent))
        or "jupyter-book"
    )
    done = subprocess.run(
        [
            jupyter_book,
            "build",
            str(ROOT),
            "-W",
            "--keep-going",
            "--path-output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    html = out / "_build" / "html"
    assert (html / "index.html").is_file()
    return html


class PageParser(HTMLParser):
    """Collects a page's element ids, link targets and image sources."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images = set(), [], []
        # a <meta http-equiv="refresh"> target (the site's index.html)
        self.redirect: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if (
            tag == "meta"
            and (a.get("http-equiv") or "").lower() == "refresh"
            and "url=" in (a.get("content") or "")
        ):
            self.redirect = a["content"].split("url=", 1)[1].strip()
            self.links.append(self.redirect)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])


@functools.cache
def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def pages(site: Path) -> list[Path]:
    return sorted(
        p
        for p in site.rglob("*.html")
        if "_static" not in p.parts and "_sources" not in p.parts
    )


def test_every_internal_link_and_image_resolves(site):
    broken = []
    for page in pages(site):
        parsed = parse(page)
        for href in parsed.links + parsed.images:
            parts = urlsplit(href)
            if parts.scheme or href.startswith(("//", "mailto:")):
                continue  # external: the launch buttons, the repository, papers
            target = (
                (page.parent / unquote(parts.path)).resolve() if parts.path else page
            )
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {href} (no such file)")
            elif (
                parts.fragment
                and target.suffix == ".html"
                and unquote(parts.fragment) not in parse(target).ids
            ):
                broken.append(f"{page.relative_to(site)}: {href} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_book_structure(site):
    names = {str(p.relative_to(site)) for p in pages(site)}
    for expected in (
        "index.html",
        "book/setup.html",
        "book/nemo.html",
        "book/bibliography.html",
        "search.html",
        "notebooks/01_corpus.html",
        "notebooks/10_mixed_precision.html",
        "notebooks/11_multi_gpu.html",
    ):
        assert expected in names
    bibliography = (site / "book" / "bibliography.html").read_text(encoding="utf-8")
    # citations resolved into entries
    assert "Vaswani" in bibliography and "Press" in bibliography
    chapter = (site / "notebooks" / "05_label_smoothing.html").read_text(
        encoding="utf-8"
    )
    # launch buttons
    assert "mybinder.org" in chapter and "colab.research.google.com" in chapter
    # the download button
    assert "_sources/notebooks/05_label_smoothing.ipynb" in chapter


class Server:
    """``_build/html`` over HTTP on 127.0.0.1 (search and MathJax need http://, not
    file://)."""

    def __init__(self, root: Path):
        handler = functools.partial(Quiet, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("LMTUT_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "LMTUT_REQUIRE_BROWSER=1 but no Chromium found "
                "(apt-get install chromium, or set LMTUT_CHROMIUM)"
            )
        pytest.skip(
            "no Chromium on this machine (apt-get install chromium, or set "
            "LMTUT_CHROMIUM)"
        )
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


#: The narrowest code cell's box of a page in characters of its font, and the longest
#: line of every code box (cells, the package's source on the page, code in the prose)
#: that runs off its right edge.
CODE_BOXES = """() => {
  const article = '.bd-article ';
  const boxes = Array.from(document.querySelectorAll(article + 'div.highlight pre'));
  const cells = Array.from(
    document.querySelectorAll(article + '.cell_input div.highlight pre'));
  const widths = cells.filter(pre => pre.clientWidth > 0).map(pre => {
    const probe = document.createElement('span');
    probe.textContent = 'M'.repeat(100);
    pre.appendChild(probe);
    const char = probe.getBoundingClientRect().width / 100;
    probe.remove();
    const style = getComputedStyle(pre);
    const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    return (pre.clientWidth - padding) / char;
  });
  const longest = pre => pre.textContent.split('\\n')
    .reduce((a, b) => (b.length > a.length ? b : a), '');
  const over = boxes
    .filter(pre => pre.clientWidth > 0 && pre.scrollWidth > pre.clientWidth + 1)
    .map(longest);
  return {chars: widths.length ? Math.floor(Math.min(...widths)) : null, over};
}"""


def ruff_line_length() -> int:
    return int(
        next(
            line.split("=")[1]
            for line in (ROOT / "pyproject.toml").read_text().splitlines()
            if line.startswith("line-length")
        )
    )


SHOOT = {
    "index.html",
    "book/nemo.html",
    "notebooks/03_encoder.html",
    "notebooks/10_mixed_precision.html",
    "notebooks/12_results.html",
    "search.html",
}


def test_pages_in_chromium(site, browser):
    server = Server(site)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems, math_pages, narrowest = [], 0, {}
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on(
            "console",
            lambda m: (
                errors.append(f"console {m.type}: {m.text}")
                if m.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        # (a request the browser aborted because the test moved on to the next page is
        # no error)
        page.on(
            "requestfailed",
            lambda r: (
                errors.append(f"request failed: {r.url} ({r.failure})")
                if "ERR_ABORTED" not in (r.failure or "")
                else None
            ),
        )
        page.on(
            "response",
            lambda r: (
                errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
            ),
        )
        for path in pages(site):
            name = str(path.relative_to(site))
            errors.clear()
            redirect = parse(path).redirect
            # a redirect page: it must land on its target, which is checked as a page of
            # its own
            if redirect:
                page.goto(urljoin(server.url, name), wait_until="commit")
                page.wait_for_url(
                    urljoin(urljoin(server.url, name), redirect), timeout=10_000
                )
                continue
            page.goto(urljoin(server.url, name), wait_until="load")
            # MathJax typesets every formula into an mjx-container
            if page.locator(".math").count():
                math_pages += 1
                page.wait_for_function(
                    "window.MathJax && MathJax.startup && MathJax.startup.promise",
                    timeout=10_000,
                )
                page.evaluate("MathJax.startup.promise")
                raw, typeset = (
                    page.locator(".math").count(),
                    page.locator(".math mjx-container").count(),
                )
                if typeset < raw:
                    problems.append(
                        f"{name}: {raw - typeset} of {raw} formulas not typeset"
                    )
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth "
                "=== 0).map(i => i.src)"
            )
            problems += [f"{name}: image not loaded: {src}" for src in broken]
            # Every code box (the cells, the package's source on the page) shows its
            # lines whole on a desktop window: the package and the cells are formatted
            # to ruff's line-length, which must fit the box.
            boxes = page.evaluate(CODE_BOXES)
            problems += [
                f"{name}: a code line runs off the box: {line[:100]!r}"
                for line in boxes["over"]
            ]
            if boxes["chars"] is not None:
                narrowest[name] = boxes["chars"]
            problems += [f"{name}: {e}" for e in errors]
            if name in SHOOT:
                page.screenshot(
                    path=str(SCREENSHOTS / (name.replace("/", "_") + ".png")),
                    full_page=False,
                )
        # An exercise's solution starts hidden and opens on a click on its title.
        page.goto(
            urljoin(server.url, "notebooks/05_label_smoothing.html#exercises"),
            wait_until="load",
        )
        solution = page.locator(".admonition.dropdown").first
        solution.scroll_into_view_if_needed()
        body = solution.locator("p").last
        hidden_before = not body.is_visible()
        solution.locator(".admonition-title").click()
        body.wait_for(state="visible", timeout=5_000)
        page.wait_for_timeout(600)  # the fade-in
        page.screenshot(path=str(SCREENSHOTS / "exercise_solution_open.png"))
        assert hidden_before, "an exercise's solution is visible before it is opened"
        page.goto(
            urljoin(server.url, "search.html?q=label+smoothing"), wait_until="load"
        )
        page.wait_for_selector("#search-results li", timeout=15_000)
        hits = page.locator("#search-results li a").evaluate_all(
            "links => links.map(a => a.href)"
        )
        page.screenshot(path=str(SCREENSHOTS / "search_label_smoothing.png"))
    finally:
        server.close()
    assert math_pages >= 3, "no typeset math found: is MathJax loading?"
    print(
        f"code boxes at 1280 px show {min(narrowest.values())} to "
        f"{max(narrowest.values())} characters"
    )
    assert min(narrowest.values()) >= ruff_line_length(), narrowest
    assert any("05_label_smoothing" in h for h in hits), hits
    assert not problems, "\n".join(problems)
