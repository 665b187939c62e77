"""The benchmarks run end to end in their --quick mode and write the JSON they promise
(figures are not judged: speed goals are checked by reading the benchmarks' output, not
by timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, out: Path, *args: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / script),
            "--quick",
            "--json",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_throughput_quick(tmp_path):
    result = run_benchmark("throughput.py", tmp_path / "t.json")
    for key in (
        "device",
        "tokens_per_s",
        "reference_tokens_per_s",
        "ratio",
        "mfu",
        "peak_memory_bytes",
    ):
        assert key in result
    assert result["tokens_per_s"] > 0 and result["reference_tokens_per_s"] > 0
    # exact: the same division of the same floats (JSON keeps them whole)
    assert result["ratio"] == result["tokens_per_s"] / result["reference_tokens_per_s"]
    assert result["mfu"] is None or 0 < result["mfu"] < 1  # MFU only on CUDA


def test_precision_quick(tmp_path):
    result = run_benchmark(
        "precision.py", tmp_path / "p.json", "--modes", "fp32", "amp-bf16"
    )
    assert [m["precision"] for m in result["modes"]] == ["fp32", "amp-bf16"]
    assert all(
        m["tokens_per_s"] > 0 and m["peak_memory_bytes"] > 0 for m in result["modes"]
    )
    assert result["modes"][0]["speedup_vs_fp32"] == 1.0


def test_loss_variants_quick(tmp_path):
    result = run_benchmark("loss_variants.py", tmp_path / "l.json")
    assert [v["variant"] for v in result["variants"]] == [
        "log-probs",
        "cross-entropy",
        "chunked",
    ]
    assert all(
        v["tokens_per_s"] > 0 and v["peak_memory_bytes"] > 0 for v in result["variants"]
    )
    losses = [v["first_loss"] for v in result["variants"]]
    # three ways to compute one loss: fp32 on the CPU or a GPU (no Trainer, so no TF32),
    # the same hidden states, the head's matmul whole or in chunks and three reductions
    # over the batch: ~1e-7 relative on the CPU, ~1e-6 expected on a GPU
    assert max(losses) - min(losses) < 1e-4 * losses[0], losses


def test_dynamic_eval_quick(tmp_path):
    # today's code against HEAD's, a tiny model
    result = run_benchmark("dynamic_eval.py", tmp_path / "d.json")
    assert set(result["median"]) == {"before", "after"} and all(
        s > 0 for s in result["median"].values()
    )
    # exact, as above
    assert result["speedup"] == result["median"]["before"] / result["median"]["after"]
    assert all(
        len(rounds) == 1 for rounds in result["seconds_per_1000_tokens"].values()
    )


def test_generation_quick(tmp_path):
    result = run_benchmark(
        "generation.py", tmp_path / "g.json", "--rounds", "1", "--words", "40"
    )
    assert result["same_words"] and set(result["median_words_per_s"]) == {
        "kv_cache",
        "no_kv_cache",
    }
    # exact, as above
    assert (
        result["ratio"]
        == result["median_words_per_s"]["kv_cache"]
        / result["median_words_per_s"]["no_kv_cache"]
    )
