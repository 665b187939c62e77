"""Chapter 1's command line: ``python -m lmtut.data download [--root DIR] [--url URL]``
(or ``lmtut-data``).

Downloads and verifies WikiText-2 with :func:`lmtut.corpus.download_wikitext2` and
prints its folder.
"""

from __future__ import annotations

import argparse
import sys

from lmtut.corpus import ENV_ROOT, ENV_URL, DataError, download_wikitext2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmtut.data", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser(
        "download", help="download and verify WikiText-2, print its folder"
    )
    dl.add_argument("--root", help=f"data root (default ${ENV_ROOT} or ~/.cache/lmtut)")
    dl.add_argument(
        "--url", help=f"mirror: http(s)/file base URL or a folder (default ${ENV_URL})"
    )
    args = parser.parse_args(argv)
    try:
        print(download_wikitext2(args.root, args.url))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
