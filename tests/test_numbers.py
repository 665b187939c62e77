"""Every figure that the README, the book's pages and the chapters' prose state has a
source.

A *figure* is a number written with decimals or thousands separators, or followed by a
unit (x, %, tokens/s, s, minutes, M, MB, ...). In README.md and book/*.md each figure
must be one that ``QUOTED`` computes from a file under ``results/`` and finds in its
sentence, or a setting or fact listed in ``NOT_MEASURED`` with the reason it needs no
file. In a chapter's markdown, a figure must be printed by one of the chapters' cells
(or written in its code), stand in a paragraph or table row that cites its paper, or be
listed in ``NOT_MEASURED``. A number typed by hand into the prose fails here until it is
computed or read from a file.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path

import pytest

from lmtut import make_config
from lmtut.datasets import num_windows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

UNIT = (
    r"x\b|%|\s?(?:tokens/s|tok/s|minutes|min\b|s\b|ms\b|M\b|M-parameter|k\b|B\b"
    r"|GiB|MiB|MB|GB|hours)"
)
FIGURE = re.compile(
    rf"(?<![\w.\-/=`$\\{{])(\d{{1,3}}(?:,\d{{3}})+|\d+\.\d+|\d+)({UNIT})?(?![\w.]\d)"
)

# figure: why it needs no results file (a version, a setting, a definition, a fact of
# the data)
NOT_MEASURED = {
    "3.10": "the Python version the setup needs",
    "127.0": "the loopback address the book test serves on",
    "50,000": "the seed script's max_steps setting (NeMo's transformer_lm.py)",
    "33,280": "the padded vocabulary size, printed by chapter 2",
    "33,278": "WikiText-2's published vocabulary size, printed by chapter 1",
    "33,279": "V - 1 for the vocabulary above",
    "33k": "the vocabulary above, rounded",
    "200,000": "a setting of the chapters' short runs (tokens of the training split)",
    "10,000": "a setting: tokens of the validation split in the short runs, or the "
    "seed's vocabulary cut",
    "1,000": "a rank or a number in the examples of WikiText's markup",
    "2,000": "a setting (the adaptive softmax's first cutoff, GradScaler's growth "
    "interval, lines of a slice)",
    "0.1": "a setting (label smoothing or dropout)",
    "0.2": "a setting in an exercise",
    "0.05": "a setting in an exercise",
    "0.8": "a setting (sampling temperature)",
    "1.0": "a setting (gradient clipping norm)",
    "0.9": "a probability in a worked example (1 - 0.1)",
    "90%": "the same probability in per cent",
    "3.5": "a number in the examples of WikiText's markup",
    "65,504": "the largest finite fp16 number, a property of the format",
    "1.2": "fp32's smallest normal mantissa, 1.2 x 10^-38, a property of the format",
    "100 GB": "an assumed bandwidth in an exercise",
}


@cache
def results(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def precision_modes(name: str) -> dict[str, float]:
    return {m["precision"]: m["tokens_per_s"] for m in results(name)["modes"]}


def computed() -> dict[str, tuple[str, str]]:
    """Figures that a solution derives by hand: figure -> (what it is, the same figure
    computed here)."""
    gpu = make_config("gpu-base")
    # the recorded run's model
    params = results("runs/gpu-base-h200/results.json")["parameters"]
    step_tokens = gpu.train.batch_size * gpu.model.max_sequence_length
    h200_tokens_per_s = results("runs/gpu-base-h200/results.json")["tokens_per_s"]
    # bytes a ring all-reduce moves per GPU, 4 GPUs, fp32 gradients
    ring = 2 * (4 - 1) / 4 * 4 * params
    vocab, eps = 33_280, 0.1
    p = 1 - eps + eps / vocab
    entropy = -(p * math.log(p) + (vocab - 1) * eps / vocab * math.log(eps / vocab))
    return {
        "17,039,360": (
            "gpu-base's untied output matrix",
            f"{vocab * gpu.model.d_model:,}",
        ),
        "1.37": ("the entropy of the smoothed target", f"{entropy:.2f}"),
        "35,987,968": ("gpu-base's parameters", f"{params:,}"),
        "144 MB": ("its fp32 gradients", f"{4 * params / 1e6:.0f} MB"),
        "216 MB": ("what a ring all-reduce moves per GPU", f"{ring / 1e6:.0f} MB"),
        "2 ms": ("that at 100 GB/s", f"{ring / 100e9 * 1e3:.0f} ms"),
        "8,192": ("gpu-base's tokens a step", f"{step_tokens:,}"),
        "13 ms": (
            "a gpu-base step on the H200",
            f"{step_tokens / h200_tokens_per_s * 1e3:.0f} ms",
        ),
        "3,835": (
            "windows of 256 sliding by 64 over the test split's 245,569 tokens",
            f"{num_windows(245_569, 256, 64):,}",
        ),
    }


@pytest.mark.parametrize("figure", list(computed()))
def test_hand_derived_figures_are_right(figure):
    what, value = computed()[figure]
    assert value == figure, f"{what} is {value}, not {figure}"


def quoted() -> list[tuple[str, str]]:
    """(file, the sentence fragment it must contain), each with the figure computed from
    its results file."""
    cpu = results("runs/cpu-demo/results.json")
    adapted = results("runs/cpu-demo/adapted.json")["adapted at test time"]
    bf16 = precision_modes("benchmarks/precision-cpu.json")
    fp16 = precision_modes("benchmarks/precision-cpu-fp16.json")
    ratio = {
        name: results(f"benchmarks/throughput-{name}.json")["ratio"]
        for name in ("cpu-fp32", "cpu-bf16", "h200-bf16", "h200-bf16-compile")
    }
    h200_reference = (
        results("benchmarks/throughput-h200-bf16-compile.json")[
            "reference_tokens_per_s"
        ]
        / results("benchmarks/throughput-h200-bf16.json")["reference_tokens_per_s"]
    )
    h200_compile_gain = (
        results("benchmarks/throughput-h200-bf16-compile.json")["tokens_per_s"]
        / results("benchmarks/throughput-h200-bf16.json")["tokens_per_s"]
    )
    adapted_all = results("runs/cpu-demo/adapted.json")
    slowest = max(
        n["seconds"] for n in results("notebooks/execution-times.json").values()
    )
    return [
        ("README.md", f"the slowest took {slowest:.0f} s to execute"),
        ("book/intro.md", f"the slowest took {slowest:.0f} s on the book's"),
        ("README.md", f"validation perplexity {cpu['valid_ppl']:.1f}"),
        ("README.md", f"test perplexity {cpu['test_ppl']:.1f}"),
        ("README.md", f"{cpu['wall_time_s'] / 60:.1f} minutes"),
        ("README.md", f"{cpu['tokens_per_s']:,.0f} tokens/s"),
        ("README.md", f"an {cpu['parameters'] / 1e6:.1f}M-parameter"),
        ("README.md", f"{cpu['steps']:,} steps"),
        ("README.md", f"about {bf16['amp-bf16'] / bf16['fp32']:.1f}x faster than fp32"),
        ("README.md", f"about {fp16['fp32'] / fp16['amp-fp16']:.0f}x slower"),
        ("README.md", f"ran at {ratio['cpu-fp32']:.2f}x the reference in fp32"),
        ("README.md", f"{ratio['cpu-bf16']:.2f}x in bf16"),
        ("README.md", f"gpu-base ran at {ratio['h200-bf16']:.2f}x in bf16"),
        ("README.md", f"{ratio['h200-bf16-compile']:.2f}x, in a session whose"),
        (
            "README.md",
            f"reference ran {1 - h200_reference:.0%} slower than in the other",
        ),
        (
            "README.md",
            f"test perplexity of "
            f"{adapted['neural cache']['perplexity']['test']:.1f} with a neural cache",
        ),
        (
            "README.md",
            f"and {adapted['dynamic evaluation']['perplexity']['test']:.1f} "
            "with dynamic evaluation",
        ),
        (
            "README.md",
            f"tunes on the first {adapted_all['tune_tokens']:,} validation tokens",
        ),
        ("README.md", f"in the other session, {h200_compile_gain:.2f}x)"),
        (
            "README.md",
            f"dynamic evaluation alone took "
            f"{adapted['dynamic evaluation']['seconds']:,.0f} s on one thread, where "
            f"the training run took {cpu['wall_time_s']:.0f} s",
        ),
        ("book/intro.md", f"test perplexity of {cpu['test_ppl']:.1f}"),
        ("book/intro.md", f"in {cpu['wall_time_s'] / 60:.1f} minutes"),
        ("book/intro.md", f"an {cpu['parameters'] / 1e6:.1f}M-parameter"),
    ]


def prose(text: str) -> str:
    """Text without code blocks and inline code, whitespace collapsed (a quoted figure
    may wrap)."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    return " ".join(text.split())


def figures(text: str) -> list[str]:
    found = []
    for m in FIGURE.finditer(prose(text)):
        number, unit = m.group(1), m.group(2)
        if "." in number or "," in number or unit:
            found.append(number + (unit or ""))
    return found


def bare(figure: str) -> str:
    return FIGURE.match(figure).group(1)


@pytest.mark.parametrize(
    "page, fragment", quoted(), ids=[f"{p}: {f}" for p, f in quoted()]
)
def test_quoted_figures_are_the_recorded_ones(page, fragment):
    assert fragment in prose((ROOT / page).read_text()), (
        f"{page} should say {fragment!r} (from results/)"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_figure_on_a_page_has_a_source(page):
    sourced = {
        bare(f)
        for p, fragment in quoted()
        if ROOT / p == page
        for f in figures(fragment)
    }
    unsourced = [
        f
        for f in figures(page.read_text())
        if bare(f) not in sourced
        and f not in NOT_MEASURED
        and bare(f) not in NOT_MEASURED
    ]
    assert not unsourced, (
        f"{page.name}: figures with no results file behind them: {unsourced}"
    )


def notebook_printed(path: Path) -> str:
    """Everything a notebook's code cells contain and print: the places a prose figure
    may come from."""
    text = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        text.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            text.append("".join(out.get("text", "")))
            for kind in ("text/plain", "text/markdown", "text/html"):
                text.append("".join(out.get("data", {}).get(kind, "")))
    return "\n".join(text)


@cache
def all_printed() -> str:
    return "\n".join(notebook_printed(p) for p in NOTEBOOKS)


def paragraphs(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    text = "\n\n".join(
        "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
    )
    # table rows stand alone
    return [p for block in re.split(r"\n\s*\n", text) for p in block.split("\n|")]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_in_a_chapter_is_printed_or_cited(notebook):
    printed = all_printed()
    missing = []
    for paragraph in paragraphs(notebook):
        if "{cite" in paragraph:
            continue  # a published figure, with its source beside it
        for f in figures(paragraph):
            number = bare(f)
            if (
                f in NOT_MEASURED
                or number in NOT_MEASURED
                or f in computed()
                or number in computed()
            ):
                continue
            unit = re.escape(f[len(number) :].strip())
            if not re.search(
                rf"(?<![\d.,]){re.escape(number)}(?![\d]|,\d)\s?{unit}", printed
            ):
                missing.append(f)
    assert not missing, (
        f"{notebook.name}: figures that no cell prints and no citation backs: {missing}"
    )


def test_the_cpu_demo_recipe_keeps_its_promise():
    cpu = results("runs/cpu-demo/results.json")
    # under ten minutes, as the README says
    assert cpu["valid_ppl"] <= 200 and cpu["wall_time_s"] <= 600
