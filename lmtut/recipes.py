"""Chapter 6: one run configuration, and the named recipes (presets) that override it.

A run is configured by one :class:`RunConfig` made of three dataclasses, each owning its defaults and checks:
:class:`lmtut.TransformerLMConfig` (the model), :class:`lmtut.TrainConfig` (optimization and the loop's schedule)
and :class:`lmtut.DataConfig` (the corpus and how it is scored). Every setting has one name, unique across the
three, so that a recipe is a flat dictionary of overrides and the command line is ``--name value``.

``make_config("cpu-demo", max_steps=50)`` builds what ``python -m lmtut.train --preset cpu-demo --max_steps 50``
builds: the book's chapters, the benchmarks and the command line read their recipes from here and nowhere else.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lmtut.datasets import DataConfig
from lmtut.model_config import TransformerLMConfig
from lmtut.nemo_compat import NEMO_ALIASES
from lmtut.train_config import TrainConfig

#: The three parts of a run's configuration.
SECTIONS: dict[str, type] = {"model": TransformerLMConfig, "train": TrainConfig, "data": DataConfig}
#: Settings that are not set by hand: the vocabulary size comes from the tokenizer.
DERIVED = ("vocab_size",)

#: The Transformer block of 2017 (chapters 3 to 6) and today's (chapter 7), as settings of TransformerLMConfig.
BLOCK_2017: dict[str, Any] = dict(norm="layer", positions="sinusoidal", activation="relu", bias=True, qk_norm=False)
BLOCK_MODERN: dict[str, Any] = dict(norm="rms", positions="rope", activation="swiglu", bias=False, qk_norm=True)
CPU_2017: dict[str, Any] = dict(
    **BLOCK_2017, d_model=256, num_layers=2, num_attn_heads=4, d_inner=1024, max_sequence_length=64,
    softmax="adaptive", tie_weights=False, predict_last_k=32, batch_size=32, dropout=0.1, label_smoothing=0.0,
    optimizer_kind="adamw", lr=2e-3, weight_decay=0.01, lr_policy="cosine", warmup_ratio=0.05, max_steps=2200,
    eval_every=440, checkpoint_every=440, log_every=50, precision="auto")

#: Named recipes: partial overrides of the defaults, by setting name.
PRESETS: dict[str, dict[str, Any]] = {
    # Ten minutes on a 2-core CPU, evaluation included: an adaptive softmax (Grave et al., 2017) buys a wider model
    # and four times the steps of a tied full softmax in the same time (chapters 4 and 6), and chapter 7's block.
    # Two validations and 2,000 steps fit ten minutes with room to spare for a busy machine. A step budget, never
    # full epochs.
    "cpu-demo": CPU_2017 | BLOCK_MODERN | dict(max_steps=2000, eval_every=1000, checkpoint_every=400),
    # The cpu-demo recipe as chapter 6 first recorded it (results/runs/cpu-demo-2017), with the block of 2017:
    # the model that chapters 4 to 6 and 9 to 10 train and measure.
    "cpu-2017": dict(**CPU_2017),
    # One GPU, 20 epochs (recorded on an H200: see the Results chapter).
    "gpu-base": dict(d_model=512, num_layers=6, num_attn_heads=8, d_inner=2048, max_sequence_length=256,
                     predict_last_k=64, batch_size=32, dropout=0.3, label_smoothing=0.1, optimizer_kind="adamw",
                     lr=5e-4, weight_decay=0.1, beta2=0.98, lr_policy="cosine", warmup_ratio=0.05,
                     num_epochs=20, eval_every=1000, checkpoint_every=1000, log_every=100, precision="auto",
                     vocab_multiple=128),
    # Chapter 8's small-data laboratory, for the corpus small_corpus(..., fraction=0.05) makes (data_dir=...): 53
    # steps an epoch, a validation each epoch, no regularization at all; it overfits within a minute on a CPU.
    "cpu-small-data": dict(d_model=128, num_layers=2, num_attn_heads=4, d_inner=512, max_sequence_length=64,
                           softmax="adaptive", tie_weights=False, predict_last_k=32, batch_size=32, dropout=0.0,
                           label_smoothing=0.0, optimizer_kind="adamw", lr=2e-3, weight_decay=0.0,
                           lr_policy="cosine", warmup_ratio=0.05, num_epochs=16, train_eval_tokens=10_000,
                           eval_every=53, checkpoint_every=10_000, log_every=53, precision="auto"),
    # Chapter 8's one-GPU recipe against over-fitting, NOT YET MEASURED on a GPU (chapter 8 gives each setting's
    # source and what is unmeasured).
    "gpu-reg": dict(d_model=400, num_layers=16, num_attn_heads=10, d_inner=900, max_sequence_length=256,
                    predict_last_k=64, batch_size=32, dropout=0.2, attn_dropout=0.2, ffn_dropout=0.2,
                    emb_dropout=0.6, word_dropout=0.2, output_dropout=0.5, locked_dropout=True,
                    label_smoothing=0.0, optimizer_kind="adamw", lr=5e-4, weight_decay=0.1, beta2=0.98,
                    lr_policy="cosine", warmup_steps=3000, num_epochs=100, ema_decay=0.999,
                    train_eval_tokens=200_000, eval_every=2540, checkpoint_every=6350, log_every=254,
                    precision="auto", compile=True, vocab_multiple=128),
    # The NeMo tutorial's defaults; its 50,000-step cosine schedule now ends with the run.
    "nemo": dict(d_model=384, num_layers=12, num_attn_heads=6, d_inner=1536, max_sequence_length=256,
                 predict_last_k=16, batch_size=32, dropout=0.2, label_smoothing=0.1, optimizer_kind="novograd",
                 lr=0.002, beta1=0.95, beta2=0.25, weight_decay=0.0, lr_policy="cosine",
                 warmup_ratio=0.02, max_steps=50_000, eval_every=1000, checkpoint_every=1000, log_every=100),
}

def field_comments(cls: type) -> dict[str, str]:
    """The comment beside each field of a dataclass's source (``name: type = default  # this``): the settings'
    documentation, for ``--help`` and for chapter 6's table of flags."""
    source = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^#\n]*#(.*)$", source, re.M)}


def setting_help() -> dict[str, str]:
    """Every setting's documentation (its field's comment)."""
    docs = {"work_dir": "where the run writes config.json, metrics, events, checkpoints and results.json"}
    for cls in SECTIONS.values():
        docs.update(field_comments(cls))
    return docs


def setting_sections() -> dict[str, str]:
    """Every setting's name -> the section that owns it (``model``, ``train``, ``data``); ``work_dir`` -> ``run``."""
    owners = {"work_dir": "run"}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if f.name in owners:
                raise TypeError(f"setting {f.name!r} is defined twice ({owners[f.name]} and {section})")
            if f.name not in DERIVED:
                owners[f.name] = section
    return owners


@dataclass
class RunConfig:
    """Everything one training run is made of: model, training and data settings, and its work dir."""

    model: TransformerLMConfig = field(default_factory=TransformerLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    work_dir: str = "runs/lm"
    preset: str | None = None

    def flat(self) -> dict[str, Any]:
        """Every setting by name (the form of a recipe and of the command line)."""
        values = {"work_dir": self.work_dir}
        for section in SECTIONS:
            values.update({k: v for k, v in asdict(getattr(self, section)).items() if k not in DERIVED})
        return values

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, by section (``config.json`` and checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(**{s: c(**d.get(s, {})) for s, c in SECTIONS.items()},
                   work_dir=d.get("work_dir", cls.work_dir), preset=d.get("preset"))


def make_config(preset: str | None = None, base: RunConfig | None = None, **overrides: Any) -> RunConfig:
    """The defaults (or ``base``), then the preset's overrides, then ``overrides``, checked; see :data:`PRESETS`."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    owners = setting_sections()
    overrides = {NEMO_ALIASES.get(k, k): v for k, v in overrides.items()}
    unknown = sorted(set(overrides) - set(owners))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; the settings are {', '.join(sorted(owners))}")
    values = base.flat() if base is not None else {}
    values.update(PRESETS.get(preset, {}))
    values.update(overrides)
    by_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        if owners[name] != "run":
            by_section[owners[name]][name] = value
    return RunConfig(**{s: c(**by_section[s]) for s, c in SECTIONS.items()},
                     work_dir=values.get("work_dir", RunConfig.work_dir),
                     preset=preset or (base.preset if base is not None else None))
