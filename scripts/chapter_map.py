"""Draw the book's chapter map (book/images/chapter_map.png), shown on the introduction
page."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [  # (number, title, what it builds in lmtut, column, row)
    (1, "The corpus", "download_wikitext2", 0, 1),
    (2, "Tokenizer, data", "WordTokenizer,\nLanguageModelingDataset", 1, 1),
    (3, "Causal encoder", "TransformerEncoder", 2, 2),
    (4, "Tied softmax", "TokenClassifier,\nTransformerLM", 2, 1),
    (5, "Label smoothing", "PaddedSmoothed-\nCrossEntropyLoss", 2, 0),
    (6, "Training", "Trainer, callbacks,\nlmtut.train", 3, 1),
    (7, "Modern block", "RMSNorm, rotary,\nSwiGLU, Muon, KV cache", 4, 1),
    (8, "Regularization", "word/locked dropout,\nweight averaging", 4, 2),
    (9, "Adapting at test", "neural cache,\ndynamic evaluation", 4, 0),
    (10, "Mixed precision", "--precision,\nGradScaler", 5, 2),
    (11, "Several GPUs", "torchrun, DDP", 5, 1),
    (12, "Results", "recorded runs,\nbenchmarks", 5, 0),
]
# training, then doing better
COLORS = {6: "tab:green", 7: "tab:purple", 8: "tab:purple", 9: "tab:purple"}
ARROWS = [
    (1, 2),
    (2, 3),
    (2, 4),
    (2, 5),
    (3, 6),
    (4, 6),
    (5, 6),
    (6, 7),
    (6, 8),
    (6, 9),
    (7, 10),
    (7, 11),
    (7, 12),
    (9, 12),
]


def main() -> None:
    fig, ax = plt.subplots(figsize=(14, 4.2))
    ax.set_xlim(-0.1, 6.0)
    ax.set_ylim(-0.5, 2.6)
    ax.axis("off")
    where = {}
    for number, title, builds, col, row in CHAPTERS:
        x, y = col * 1.0 + 0.05, row * 1.0
        where[number] = (x, y)
        color = COLORS.get(number, "tab:blue" if number <= 5 else "tab:orange")
        ax.add_patch(
            plt.Rectangle((x, y - 0.3), 0.85, 0.6, color=color, alpha=0.18, ec=color)
        )
        ax.text(
            x + 0.425,
            y + 0.14,
            f"{number}. {title}",
            ha="center",
            va="center",
            fontsize=10,
            weight="bold",
        )
        ax.text(
            x + 0.425,
            y - 0.11,
            builds,
            ha="center",
            va="center",
            fontsize=7.5,
            family="monospace",
        )
    for a, b in ARROWS:
        (xa, ya), (xb, yb) = where[a], where[b]
        ax.annotate(
            "",
            (xb, yb),
            (xa + 0.85, ya),
            arrowprops=dict(arrowstyle="->", color="gray", lw=1.2),
        )
    ax.text(0.05, -0.45, "the model and its data (1-5)", color="tab:blue", fontsize=9)
    ax.text(1.6, -0.45, "training (6)", color="tab:green", fontsize=9)
    ax.text(
        2.85,
        -0.45,
        "a better model, better on small data (7-9)",
        color="tab:purple",
        fontsize=9,
    )
    ax.text(
        5.05, -0.45, "faster, larger, measured (10-12)", color="tab:orange", fontsize=9
    )
    out = ROOT / "book" / "images" / "chapter_map.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
