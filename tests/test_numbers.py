"""The figures that the README and the book's pages quote from recorded runs are those runs' figures."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cpu_demo_figures_quoted_are_the_recorded_ones():
    results = json.loads((ROOT / "results" / "runs" / "cpu-demo" / "results.json").read_text())
    readme, intro = (ROOT / "README.md").read_text(), (ROOT / "book" / "intro.md").read_text()
    words = " ".join(readme.split())  # quoted figures may wrap across lines
    assert f"validation perplexity {results['valid_ppl']:.1f}" in words
    assert f"test perplexity {results['test_ppl']:.1f}" in words
    assert f"{results['wall_time_s'] / 60:.1f} minutes" in words
    assert f"{results['tokens_per_s']:,.0f} tokens/s" in words
    assert f"{results['parameters'] / 1e6:.1f}M-parameter" in words
    assert f"{results['steps']:,} steps" in words
    intro_words = " ".join(intro.split())
    assert f"test perplexity of {results['test_ppl']:.1f}" in intro_words
    assert f"in {results['wall_time_s'] / 60:.1f} minutes" in intro_words
    assert f"{results['parameters'] / 1e6:.1f}M-parameter" in intro_words
    assert results["valid_ppl"] <= 200 and results["wall_time_s"] <= 600  # the recipe's promise
