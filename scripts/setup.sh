#!/usr/bin/env bash
# Set everything up and run the main job: a virtual environment in .venv with torch, the book's requirements and
# lmtut (editable), then the book, built into _build/html.
#   bash scripts/setup.sh                  install, then build the book
#   bash scripts/setup.sh --install-only   install only (what .ci/run does before the tests)
# Set PYTHON to choose the interpreter (default python3). torch is installed only when the venv lacks it:
# torch==2.13.0 from pip's configured indexes; install the build you want first to override (see book/setup.md).
set -euo pipefail
cd "$(dirname "$0")/.."
install_only=0
[ "${1:-}" = "--install-only" ] && install_only=1

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
py=.venv/bin/python
"$py" -m pip install --quiet --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0"
  "$py" -m pip install --quiet torch==2.13.0
fi
echo "setup: installing requirements.txt and lmtut"
"$py" -m pip install --quiet -r requirements.txt
"$py" -m pip install --quiet --no-deps -e .
"$py" -c "import torch, lmtut; print(f'setup: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"

if [ $install_only = 0 ]; then
  .venv/bin/jupyter-book build .
  echo "setup: the book is in _build/html/index.html"
fi

# What this machine can do for the book, and the one command that fixes each problem (WikiText-2 is downloaded by
# the first chapter or `python -m lmtut.data download`; until then the doctor reports it missing).
echo "setup: python -m lmtut.doctor"
"$py" -m lmtut.doctor || echo "setup: the doctor found problems; each line above names the command that fixes it"
