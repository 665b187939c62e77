"""The corpus (chapter 1): download and verify WikiText-2, count its splits; and chapter
8's smaller copy of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from lmtut.runtime import atomic_open, atomic_write_text

# --------------------------------------------------------------------------------------
# Chapter 1: the WikiText-2 corpus (Merity et al., 2016), downloaded, verified and
# counted.
#
# ``download_wikitext2`` puts the three word-level splits ``train.txt``, ``valid.txt``
# and ``test.txt`` (the names of the NeMo tutorial and of pytorch/examples;
# byte-identical to ``wiki.{train,valid,test}.tokens`` of ``wikitext-2-v1.zip``) into
# one folder and checks each file's sha256. A file is written to ``NAME.part`` and
# renamed only once its checksum matches (``lmtut.runtime.atomic_open``), so an
# interrupted or corrupt download never leaves a file that looks good. Sources are tried
# in order, and each failure is said in one line:
#
# 1. a mirror, given as ``url=`` or by ``LMTUT_WIKITEXT2_URL``: an ``http(s)://`` or
#    ``file://`` base URL holding the three files, or a plain local directory;
# 2. pytorch/examples' raw files on GitHub, at a pinned commit;
# 3. the dataset author's ``wikitext-2-v1.zip``, extracted safely and renamed.
#
# Command line (``lmtut/data.py``): ``python -m lmtut.data download [--root DIR] [--url
# URL]`` prints the folder.

SPLITS = ("train", "valid", "test")

#: sha256 of each split of pytorch/examples' copy (no checksums are published for it).
SHA256 = {
    "train.txt": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}

#: pytorch/examples at a pinned commit (the files have not changed since 2017).
PYTORCH_EXAMPLES_URL = (
    "https://raw.githubusercontent.com/pytorch/examples/"
    "cada773327ba94a5970e0d57c17c847d69dbbb8f/word_language_model/data/wikitext-2/"
)
#: The dataset author's mirror of the original archive (the Salesforce S3 address now
#: answers 403).
WIKITEXT2_ZIP_URL = "https://wikitext.smerity.com/wikitext-2-v1.zip"
#: Where each split lies inside ``wikitext-2-v1.zip``.
ZIP_MEMBERS = {f"{s}.txt": f"wikitext-2/wiki.{s}.tokens" for s in SPLITS}

ENV_URL = "LMTUT_WIKITEXT2_URL"
ENV_ROOT = "LMTUT_DATA_DIR"
# Some hosts refuse Python's default User-Agent.
_HEADERS = {"User-Agent": "lmtut (https://github.com/lmtut/lmtut) python-urllib"}
_CHUNK = 1 << 20


class DataError(RuntimeError):
    """A download or data problem, with a one-line message that says what to do."""


# ------------------------------------------------------------------------------ helpers


def default_root() -> Path:
    """``$LMTUT_DATA_DIR`` if set, else ``~/.cache/lmtut``."""
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmtut"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_verified(path: Path) -> bool:
    return path.is_file() and sha256_file(path) == SHA256[path.name]


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise DataError(
            f"cannot write to data folder {folder} ({e.strerror or e}); "
            f"choose another with --root or {ENV_ROOT}"
        ) from None


def _copy_stream(src, out, total: int | None, desc: str) -> None:
    """Copy a binary stream into the open file ``out`` with a progress bar."""
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        leave=False,
    ) as bar:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            out.write(chunk)
            bar.update(len(chunk))


def _fetch(url: str, out, timeout: float) -> None:
    """Fetch ``url`` (http, https, file, or a local path) into the open binary file
    ``out``."""
    desc = url.rsplit("/", 1)[-1]
    if "://" not in url:  # a plain local path
        url = Path(url).resolve().as_uri()
    req = urllib.request.Request(url, headers=_HEADERS)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length")
        _copy_stream(resp, out, int(length) if length else None, desc)


def _join(base: str, name: str) -> str:
    if "://" not in base:
        return str(Path(base) / name)
    return base.rstrip("/") + "/" + name


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"unreachable ({e.reason})"
    return str(e) or type(e).__name__


def _verified(name: str) -> Callable[[Path], None]:
    """A check for :func:`atomic_open`: refuse a finished ``.part`` file whose sha256 is
    not ``name``'s."""

    def check(part: Path) -> None:
        digest = sha256_file(part)
        if digest != SHA256[name]:
            raise DataError(
                f"{name}: checksum mismatch (corrupt or truncated; sha256 "
                f"{digest[:12]}..., "
                f"expected {SHA256[name][:12]}...)"
            )

    return check


# ------------------------------------------------------------------------------ sources


def _from_base_url(base: str, folder: Path, names: list[str], timeout: float) -> None:
    """A base URL or folder holding ``train.txt``, ``valid.txt``, ``test.txt``."""
    for name in names:
        try:
            with atomic_open(folder / name, "wb", check=_verified(name)) as out:
                _fetch(_join(base, name), out, timeout)
        except (OSError, ValueError) as e:
            raise DataError(f"{name}: {_reason(e)}") from None


def _safe_members(archive: zipfile.ZipFile, target: Path) -> None:
    """Refuse an archive any of whose members would land outside ``target`` (zip
    slip)."""
    root = target.resolve()
    for info in archive.infolist():
        dest = (root / info.filename).resolve()
        if info.filename.startswith(("/", "\\")) or (
            dest != root and root not in dest.parents
        ):
            raise DataError(
                f"archive member {info.filename!r} escapes the target "
                "folder; refusing the archive"
            )


def _from_zip(url: str, folder: Path, names: list[str], timeout: float) -> None:
    """The original ``wikitext-2-v1.zip``: download, check every member's path, extract,
    verify, rename."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".zip-") as tmp:
        zpath = Path(tmp) / "wikitext-2-v1.zip"
        try:
            with open(zpath, "wb") as out:
                _fetch(url, out, timeout)
        except (OSError, ValueError) as e:
            raise DataError(_reason(e)) from None
        try:
            with zipfile.ZipFile(zpath) as archive:
                _safe_members(archive, Path(tmp))
                present = set(archive.namelist())
                missing = [
                    ZIP_MEMBERS[n] for n in names if ZIP_MEMBERS[n] not in present
                ]
                if missing:
                    raise DataError(
                        f"archive lacks the expected files {', '.join(missing)}"
                    )
                for name in names:
                    with (
                        archive.open(ZIP_MEMBERS[name]) as src,
                        atomic_open(folder / name, "wb", check=_verified(name)) as out,
                    ):
                        shutil.copyfileobj(src, out, _CHUNK)
        except zipfile.BadZipFile as e:
            raise DataError(f"not a valid zip archive ({e})") from None


Source = tuple[str, Callable[[Path, list[str], float], None]]


def _sources(url: str | None) -> list[Source]:
    mirror = url or os.environ.get(ENV_URL)
    out: list[Source] = []
    if mirror:
        out.append(
            (f"mirror {mirror}", lambda f, n, t: _from_base_url(mirror, f, n, t))
        )
    out.append(
        (
            "pytorch/examples on GitHub",
            lambda f, n, t: _from_base_url(PYTORCH_EXAMPLES_URL, f, n, t),
        )
    )
    out.append(
        (WIKITEXT2_ZIP_URL, lambda f, n, t: _from_zip(WIKITEXT2_ZIP_URL, f, n, t))
    )
    return out


def download_wikitext2(
    root: str | os.PathLike | None = None,
    url: str | None = None,
    *,
    timeout: float = 30.0,
    quiet: bool = False,
) -> Path:
    """Fetch and verify WikiText-2; return the folder holding ``train.txt``,
    ``valid.txt``, ``test.txt``.

    ``root`` defaults to ``$LMTUT_DATA_DIR`` or ``~/.cache/lmtut``; the files go to
    ``root/wikitext-2``. ``url`` (or ``$LMTUT_WIKITEXT2_URL``) names a mirror tried
    before the public sources. Idempotent: files already present are only verified.
    Raises :class:`DataError` (one line) when no source gives verified files; nothing
    partial or unverified is left behind.
    """
    folder = (
        Path(root).expanduser() if root is not None else default_root()
    ) / "wikitext-2"
    _ensure_writable(folder)
    for name in SHA256:  # a file that fails its check is removed, then fetched again
        if (folder / name).exists() and not _is_verified(folder / name):
            print(
                f"lmtut: {folder / name} fails its checksum; fetching it again",
                file=sys.stderr,
            )
            (folder / name).unlink()
    names = [n for n in SHA256 if not (folder / n).is_file()]
    if not names:
        return folder
    failures = []
    for label, fetch in _sources(url):
        try:
            fetch(folder, names, timeout)
        except DataError as e:
            failures.append(f"{label}: {e}")
            if not quiet:
                print(f"lmtut: WikiText-2 from {label} failed: {e}", file=sys.stderr)
        # only verified files are ever renamed in
        names = [n for n in names if not (folder / n).is_file()]
        if not names:
            return folder
    raise DataError(
        f"could not get verified WikiText-2 files ({', '.join(names)}) into {folder}; "
        "tried "
        + "; ".join(failures)
        + f". Set {ENV_URL} (or --url) to a folder or URL holding train.txt, valid.txt "
        "and test.txt"
    )


# --------------------------------------------------------------------------- statistics


@dataclass
class SplitStats:
    """Counts for one split, tokens counted as in pytorch/examples: the words of each
    line plus one ``<eos>``."""

    lines: int
    tokens: int
    types: int
    unk: int
    article_lengths: list[int] = field(repr=False)
    counts: Counter = field(repr=False)

    @property
    def articles(self) -> int:
        return len(self.article_lengths)


def is_article_title(lines: list[str], i: int) -> bool:
    """Whether ``lines[i]`` starts an article: a level-1 heading `` = Title = `` between
    two blank lines.

    Sections are `` = = Section = = ``; the blank lines rule out table rows such as `` =
    Goals ; A = ``.
    """
    words = lines[i].split()
    heading = (
        len(words) >= 3 and words[0] == "=" and words[-1] == "=" and words[1] != "="
    )
    blank_before = i == 0 or not lines[i - 1].strip()
    blank_after = i + 1 == len(lines) or not lines[i + 1].strip()
    return heading and blank_before and blank_after


def split_statistics(path: str | os.PathLike) -> SplitStats:
    """Line, token and type counts of one split file, and the token length of each
    article."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    counts: Counter = Counter()
    lengths: list[int] = []
    for i, line in enumerate(lines):
        words = line.split() + ["<eos>"]
        if is_article_title(lines, i):
            lengths.append(0)
        if lengths:
            lengths[-1] += len(words)
        counts.update(words)
    return SplitStats(
        lines=len(lines),
        tokens=sum(counts.values()),
        types=len(counts),
        unk=counts["<unk>"],
        article_lengths=lengths,
        counts=counts,
    )


def corpus_statistics(
    folder: str | os.PathLike, splits: Iterable[str] = SPLITS
) -> dict[str, SplitStats]:
    """:func:`split_statistics` for each split in ``folder``."""
    return {s: split_statistics(Path(folder) / f"{s}.txt") for s in splits}


# --------------------------------------------------------------------------------------
# Chapter 8: a smaller WikiText-2, to watch over-fitting on a CPU in seconds.
#
# ``small_corpus(source, target, fraction=0.1)`` keeps the first whole articles of the
# training split, up to about ``fraction`` of its tokens, and the full validation and
# test splits. The folder is a corpus like any other: ``prepare_corpus(target)`` builds
# *its* vocabulary from *its* training split, so that a word the small training split
# never shows is ``<unk>`` in validation too, as WikiText-2 itself was built from its
# own training text (Merity et al., 2016). Keeping the big split's vocabulary instead
# would let the model learn only that the missing words never occur: validation
# perplexity would then rise on them alone, whatever the regularization.


def first_articles(lines: list[str], fraction: float) -> list[str]:
    """The lines of the first whole articles that hold at least ``fraction`` of the
    tokens (``<eos>`` counted)."""
    total = sum(len(line.split()) + 1 for line in lines)
    kept = 0
    for i, line in enumerate(lines):
        if kept >= fraction * total and is_article_title(lines, i):
            return lines[:i]
        kept += len(line.split()) + 1
    return lines


def small_corpus(
    source: str | os.PathLike, target: str | os.PathLike, fraction: float = 0.1
) -> Path:
    """Write ``target/train.txt`` (the first articles of ``source``'s, about
    ``fraction`` of its tokens) and copies of ``valid.txt`` and ``test.txt``; return
    ``target``, ready for :func:`lmtut.prepare_corpus`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    source, target = Path(source), Path(target)
    lines = (source / "train.txt").read_text(encoding="utf-8").splitlines()
    atomic_write_text(
        target / "train.txt", "\n".join(first_articles(lines, fraction)) + "\n"
    )
    for split in ("valid", "test"):
        shutil.copyfile(source / f"{split}.txt", target / f"{split}.txt")
    return target
