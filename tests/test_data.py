"""Chapter 1: downloading and verifying WikiText-2, against a real HTTP server on
127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from lmtut import corpus as data
from lmtut.corpus import SHA256, DataError, corpus_statistics, download_wikitext2
from lmtut.data import main as data_main

NAMES = list(SHA256)


class _Handler(http.server.SimpleHTTPRequestHandler):
    # keep the test output clean; requests are recorded instead
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/www`` on 127.0.0.1; yields (folder, base URL, list of request
    paths)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(www))
    )
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def offline_fallbacks(monkeypatch, server):
    """Point the public fallback sources at paths the local server does not have (404),
    and drop the env mirror."""
    _, base, _ = server
    monkeypatch.delenv(data.ENV_URL, raising=False)
    monkeypatch.setattr(data, "PYTORCH_EXAMPLES_URL", base + "/no-such-dir/")
    monkeypatch.setattr(data, "WIKITEXT2_ZIP_URL", base + "/no-such.zip")


def _publish(wikitext2_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        shutil.copyfile(wikitext2_dir / name, dest / name)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _make_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, content in members.items():
            z.writestr(name, content)


def _zip_members(wikitext2_dir: Path) -> dict[str, bytes]:
    return {data.ZIP_MEMBERS[n]: (wikitext2_dir / n).read_bytes() for n in NAMES}


def test_http_mirror_downloads_verifies_and_is_idempotent(
    tmp_path, server, offline_fallbacks, wikitext2_dir
):
    www, base, requests = server
    _publish(wikitext2_dir, www / "wt2")
    folder = download_wikitext2(tmp_path / "root", url=base + "/wt2")
    assert folder == tmp_path / "root" / "wikitext-2"
    # no .part files
    assert _leftovers(folder) == ["test.txt", "train.txt", "valid.txt"]
    assert all(data.sha256_file(folder / n) == SHA256[n] for n in NAMES)
    assert sorted(requests) == ["/wt2/test.txt", "/wt2/train.txt", "/wt2/valid.txt"]
    requests.clear()
    assert download_wikitext2(tmp_path / "root", url=base + "/wt2") == folder
    assert requests == []  # the second call only verifies


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_bad_file_is_rejected_and_nothing_unverified_is_left(
    tmp_path, server, offline_fallbacks, wikitext2_dir, damage
):
    www, base, _ = server
    _publish(wikitext2_dir, www / "wt2")
    raw = bytearray((www / "wt2" / "valid.txt").read_bytes())
    if damage == "corrupt":
        raw[1000] ^= 0x20
    else:
        del raw[len(raw) // 2 :]
    (www / "wt2" / "valid.txt").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="valid.txt: checksum mismatch") as err:
        download_wikitext2(tmp_path / "root", url=base + "/wt2", quiet=True)
    assert "\n" not in str(err.value)
    assert "LMTUT_WIKITEXT2_URL" in str(err.value)  # it says what to do
    # train.txt was verified before valid.txt failed and stays; no unverified file or
    # .part remains.
    assert _leftovers(tmp_path / "root" / "wikitext-2") == ["train.txt"]


def test_local_corrupt_file_is_fetched_again(
    tmp_path, offline_fallbacks, wikitext2_dir
):
    folder = download_wikitext2(tmp_path, url=str(wikitext2_dir))
    (folder / "test.txt").write_text("not wikitext")
    # a file:// URL this time
    download_wikitext2(tmp_path, url=wikitext2_dir.as_uri(), quiet=True)
    assert data.sha256_file(folder / "test.txt") == SHA256["test.txt"]


def test_unreachable_source_is_one_line_per_source(
    tmp_path, server, offline_fallbacks, capsys
):
    _, base, _ = server
    with pytest.raises(DataError) as err:
        download_wikitext2(tmp_path, url=base + "/missing")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(
        line.startswith("lmtut: WikiText-2 from ") for line in lines
    )
    assert "HTTP 404" in lines[0] and "HTTP 404" in lines[2]
    assert "HTTP 404" in str(err.value)
    assert _leftovers(tmp_path / "wikitext-2") == []


def test_zip_fallback_extracts_and_renames(
    tmp_path, server, offline_fallbacks, monkeypatch, wikitext2_dir
):
    www, base, _ = server
    _make_zip(
        www / "wikitext-2-v1.zip",
        _zip_members(wikitext2_dir) | {"wikitext-2/README": b"x"},
    )
    monkeypatch.setattr(data, "WIKITEXT2_ZIP_URL", base + "/wikitext-2-v1.zip")
    # no mirror: GitHub (404 here), then the archive
    folder = download_wikitext2(tmp_path, quiet=True)
    # the temporary zip folder is gone
    assert _leftovers(folder) == ["test.txt", "train.txt", "valid.txt"]
    assert all(data.sha256_file(folder / n) == SHA256[n] for n in NAMES)


@pytest.mark.parametrize(
    "evil", ["../evil.txt", "wikitext-2/../../evil.txt", "/tmp/evil-lmtut.txt"]
)
def test_zip_with_path_traversal_member_is_refused(
    tmp_path, server, offline_fallbacks, monkeypatch, wikitext2_dir, evil
):
    www, base, _ = server
    _make_zip(www / "w.zip", {evil: b"gotcha"} | _zip_members(wikitext2_dir))
    monkeypatch.setattr(data, "WIKITEXT2_ZIP_URL", base + "/w.zip")
    with pytest.raises(DataError, match="escapes the target folder"):
        download_wikitext2(tmp_path / "root", quiet=True)
    assert _leftovers(tmp_path / "root" / "wikitext-2") == []
    assert (
        not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil-lmtut.txt").exists()
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ({"wikitext-2/wiki.train.tokens": b"x"}, "archive lacks the expected files"),
        (None, "not a valid zip"),
    ],
)
def test_bad_archive(
    tmp_path, server, offline_fallbacks, monkeypatch, content, message
):
    www, base, _ = server
    if content is None:
        (www / "w.zip").write_bytes(b"<html>not a zip</html>")
    else:
        _make_zip(www / "w.zip", content)
    monkeypatch.setattr(data, "WIKITEXT2_ZIP_URL", base + "/w.zip")
    with pytest.raises(DataError, match=message):
        download_wikitext2(tmp_path, quiet=True)
    assert _leftovers(tmp_path / "wikitext-2") == []


def test_unwritable_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        DataError, match="cannot write to data folder .* choose another with --root"
    ):
        download_wikitext2(blocker)


def test_cli_prints_folder_or_one_line_error(
    tmp_path, offline_fallbacks, wikitext2_dir, capsys
):
    assert (
        data_main(["download", "--root", str(tmp_path), "--url", str(wikitext2_dir)])
        == 0
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / "wikitext-2")
    assert (
        data_main(
            [
                "download",
                "--root",
                str(tmp_path / "other"),
                "--url",
                str(tmp_path / "nowhere"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "error: could not get verified WikiText-2 files"
    ) and "Traceback" not in "".join(err)


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path))
    assert data.default_root() == tmp_path
    monkeypatch.delenv(data.ENV_ROOT)
    assert data.default_root() == Path.home() / ".cache" / "lmtut"


def test_statistics_match_the_published_counts(wikitext2_dir):
    stats = corpus_statistics(wikitext2_dir)
    train, valid, test = stats["train"], stats["valid"], stats["test"]
    assert (train.lines, train.tokens, train.types) == (36_718, 2_088_628, 33_278)
    assert (valid.lines, valid.tokens) == (3_760, 217_646)
    assert (test.lines, test.tokens) == (4_358, 245_569)
    # as in Merity et al. (2016)
    assert (train.articles, valid.articles, test.articles) == (600, 60, 60)
    # all but the blank line before the first title
    assert sum(train.article_lengths) == train.tokens - 1
    assert train.counts.most_common(1)[0][0] == "the"
