#!/usr/bin/env bash
# The GPU check: one command for whoever has a GPU (about 10 minutes on one H100 or H200).
#   bash scripts/gpu_check.sh
# It prints the device, runs the GPU tier of the tests, the whole test suite with nbval on the GPU, the throughput
# benchmark with and without --compile, the precision benchmark, and records `--preset gpu-base` with
# scripts/record_run.py; then it lists the files it wrote under results/ for committing. It runs from a plain
# checkout (PYTHONPATH, no install) with torch, numpy, tqdm, matplotlib, tensorboard and the test packages.
# Without a GPU (or with LMTUT_DEVICE=cpu) it runs the parts a CPU can check: the GPU tests (skipped, with their
# reason) and quick benchmark runs, written to a temporary folder rather than results/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
if [ -z "${LMTUT_WIKITEXT2_URL:-}" ] && [ -d ../shared/data/wikitext-2 ]; then
  export LMTUT_WIKITEXT2_URL="$(cd ../shared/data/wikitext-2 && pwd)"
fi
stamp=$(mktemp)
failed=()
step() {  # run a step, time it, remember failures, go on
  local name=$1; shift
  echo; echo "== $name: $*"
  local t=$SECONDS
  "$@" || failed+=("$name")
  echo "== $name took $((SECONDS - t)) s"
}

read -r kind name < <("$py" -c "import lmtut; d = lmtut.default_device(); print(d.type, lmtut.describe_device(d))")
"$py" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: {torch.cuda.device_count()}')"
echo "device: $kind ($name)"
slug=$(echo "$name" | tr 'A-Z' 'a-z' | sed -e 's/nvidia//' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')

step "GPU tests" "$py" -m pytest tests/test_gpu.py -p no:cacheprovider -o addopts= -rs -q
if [ "$kind" = cuda ]; then
  step "all tests, nbval included" "$py" -m pytest -q
  step "throughput" "$py" benchmarks/throughput.py --precision amp-bf16 --json "results/benchmarks/throughput-$slug-bf16.json"
  step "throughput, compiled" "$py" benchmarks/throughput.py --precision amp-bf16 --compile \
    --json "results/benchmarks/throughput-$slug-bf16-compile.json"
  step "precision" "$py" benchmarks/precision.py --json "results/benchmarks/precision-$slug.json"
  step "gpu-base run" "$py" scripts/record_run.py "gpu-base-$slug" -- --preset gpu-base
else
  out=$(mktemp -d)
  echo; echo "no GPU: the full suite, the timed benchmarks and the gpu-base run need one; quick benchmarks into $out"
  step "throughput (quick)" "$py" benchmarks/throughput.py --quick --json "$out/throughput.json"
  step "precision (quick)" "$py" benchmarks/precision.py --quick --json "$out/precision.json"
fi

echo; echo "== files written under results/ (commit these):"
find results -type f -newer "$stamp" | sort
rm -f "$stamp"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"; exit 1
fi
echo "gpu_check: all steps passed on $name"
