"""One run's configuration (chapter 6): the training config, the NeMo names the command
line accepts, the run config of three parts and the named recipes (presets) that
override it.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lmtut.datasets import DataConfig
from lmtut.model import TransformerLMConfig
from lmtut.runtime import PRECISION_ALIASES, PRECISIONS

# --------------------------------------------------------------------------------------
# Chapter 6: the settings of optimization and of the training loop's schedule (a part of
# ``lmtut.RunConfig``). Every setting is checked here, once: the parts of
# ``lmtut.optim`` and ``lmtut.runtime`` trust what they get.

#: The optimizers of ``lmtut.optim`` by ``optimizer_kind``.
OPTIMIZERS = ("adam", "adamw", "sgd", "novograd", "muon")
#: The learning-rate policies of ``lmtut.optim`` by ``lr_policy``, NeMo's names
#: included.
LR_POLICIES = {
    "constant": "constant",
    "constantwithwarmup": "constant",
    "cosine": "cosine",
    "cosineannealing": "cosine",
    "linear": "linear",
    "warmupannealing": "linear",
    "inverse_sqrt": "inverse_sqrt",
    "inversesquarerootannealing": "inverse_sqrt",
}
LR_POLICY_NAMES = ("constant", "cosine", "linear", "inverse_sqrt")
#: The names ``precision`` takes: ``lmtut.runtime``'s modes, their short names and auto.
PRECISION_NAMES = (*PRECISIONS, *PRECISION_ALIASES, "auto")


@dataclass
class TrainConfig:
    """The optimization and the training loop's schedule, under one name each (NeMo's
    names are aliases on the command line: see ``lmtut.config``)."""

    batch_size: int = 32  # windows per micro-batch, over all ranks
    # micro-batches per optimizer step: gradient accumulation (NeMo's iter_per_step)
    batches_per_step: int = 1
    num_epochs: int = 1  # passes over the training windows (unless max_steps is set)
    max_steps: int | None = None  # overrides num_epochs
    # adam, adamw, sgd, novograd, or muon (on the blocks' matrices; AdamW on the rest)
    optimizer_kind: str = "adamw"
    lr: float = 1e-3  # peak learning rate, after the warmup
    # decoupled (AdamW); never on biases, LayerNorm weights or positions
    weight_decay: float = 0.0
    beta1: float = 0.9  # Adam's first-moment decay (SGD: momentum)
    beta2: float = 0.999  # Adam's second-moment decay
    # optimizer_kind muon: Muon's peak learning rate (None: lr)
    muon_lr: float | None = None
    muon_momentum: float = 0.95  # optimizer_kind muon: Muon's momentum
    lr_policy: str = "cosine"  # constant, cosine, linear or inverse_sqrt
    # linear warmup over this share of the steps (NeMo's lr_warmup_proportion)
    warmup_ratio: float = 0.05
    # linear warmup over this many steps instead (overrides warmup_ratio)
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0  # where the decay ends, as a share of lr
    clip_grad_norm: float | None = 1.0  # None or 0: no clipping
    # eps of the smoothed training loss (Chapter 5); perplexity is never smoothed
    label_smoothing: float = 0.0
    seed: int = 0  # seeds the weights, dropout and the data order
    num_workers: int = 0  # DataLoader worker processes
    # fp32 | amp-fp16 | amp-bf16 | auto | O0 | O1 | O2 (chapter 10)
    precision: str = "fp32"
    # read the loss back every N steps (None: log_every on a GPU, 1 on a CPU)
    sync_every: int | None = None
    # fp16: stop after this many consecutive steps skipped for overflow
    max_skipped_steps: int = 20
    compile: bool = False  # torch.compile the model (chapter 12)
    log_every: int = 25  # steps between loss records
    eval_every: int = 500  # steps between validations (and one at the end)
    eval_batch_size: int = 32  # windows per evaluation batch
    # at each validation also score this many training tokens, as train_ppl (0: off)
    train_eval_tokens: int = 0
    # keep an exponential moving average of the weights, evaluated and saved (0: off)
    ema_decay: float = 0.0
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # the newest checkpoints kept

    def __post_init__(self) -> None:
        # Apex's O1 is amp-fp16
        self.precision = O_LEVELS.get(self.precision.strip().upper(), self.precision)
        self._check_counts()
        self._check_rates()
        self._check_choices()

    def _check_counts(self) -> None:
        positive = [
            "batch_size",
            "batches_per_step",
            "num_epochs",
            "log_every",
            "eval_every",
            "eval_batch_size",
            "checkpoint_every",
            "keep_checkpoints",
            "max_skipped_steps",
        ]
        positive += [
            name
            for name in ("max_steps", "sync_every", "warmup_steps")
            if getattr(self, name) is not None
        ]
        for name in positive:
            if getattr(self, name) < (0 if name == "warmup_steps" else 1):
                raise ValueError(
                    f"{name} must be a positive integer, got {getattr(self, name)}"
                )
        if self.train_eval_tokens < 0:
            raise ValueError(
                f"train_eval_tokens must be 0 (off) or more, got "
                f"{self.train_eval_tokens}"
            )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")

    def _check_rates(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(
                f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"ema_decay must lie in [0, 1) (0: no averaging), got {self.ema_decay}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"label_smoothing must lie in [0, 1), got {self.label_smoothing}"
            )

    def _check_choices(self) -> None:
        if self.optimizer_kind.lower() not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer_kind {self.optimizer_kind!r}; choose "
                f"one of {', '.join(OPTIMIZERS)}"
            )
        if self.lr_policy.lower() not in LR_POLICIES:
            raise ValueError(
                f"unknown lr_policy {self.lr_policy!r}; choose one of "
                f"{', '.join(LR_POLICY_NAMES)}"
            )
        if self.precision.strip().lower() not in PRECISION_NAMES:
            raise ValueError(
                f"unknown precision {self.precision!r}: choose fp32, "
                "amp-fp16, amp-bf16, auto, or an "
                "Apex level O0, O1, O2 (O3, pure fp16 without master "
                "weights, is not supported)"
            )


# --------------------------------------------------------------------------------------
# Chapter 6: what lmtut keeps of the NeMo tutorial's interface (NeMo 0.x
# ``transformer_lm.py`` and Apex).
#
# NeMo's flag names that lmtut accepts as aliases of its own, NeMo's flags in their
# order (for chapter 6's table), the flags lmtut does not take and what replaced each,
# and Apex's O-levels as precision modes.

#: NeMo's (NeMo 0.x ``transformer_lm.py``) flag names, and earlier lmtut names, accepted
#: as aliases.
NEMO_ALIASES: dict[str, str] = {
    "max_seq_length": "max_sequence_length",
    "attn_layer_dropout": "dropout",
    "attn_score_dropout": "attn_dropout",
    "embedding_dropout": "emb_dropout",
    "iter_per_step": "batches_per_step",
    "lr_warmup_proportion": "warmup_ratio",
    "amp_opt_level": "precision",
    "eval_freq": "eval_every",
    "save_step_freq": "checkpoint_every",
    "checkpoint_save_freq": "checkpoint_every",
    "loss_log_freq": "log_every",
}
#: The arguments of NeMo's ``transformer_lm.py`` (NeMo 0.x), in its order, with
#: ``NemoArgParser``'s LR settings.
NEMO_FLAGS = (
    "train_dataset",
    "eval_dataset",
    "work_dir",
    "optimizer_kind",
    "amp_opt_level",
    "num_epochs",
    "batch_size",
    "eval_batch_size",
    "lr",
    "beta1",
    "beta2",
    "weight_decay",
    "warmup_steps",
    "max_steps",
    "iter_per_step",
    "eval_freq",
    "lr_policy",
    "lr_warmup_proportion",
    "data_dir",
    "dataset_name",
    "d_model",
    "d_inner",
    "num_layers",
    "num_attn_heads",
    "embedding_dropout",
    "ffn_dropout",
    "attn_score_dropout",
    "attn_layer_dropout",
    "max_seq_length",
    "do_lower_case",
    "label_smoothing",
    "beam_size",
    "tokenizer_model",
    "predict_last_k",
    "save_epoch_freq",
    "save_step_freq",
    "interactive",
    "local_rank",
)
#: NeMo's flags that lmtut does not take, and what replaced each.
RETIRED_NEMO_FLAGS: dict[str, str] = {
    "interactive": "sample from a checkpoint with python -m lmtut.generate CHECKPOINT "
    "--prompt TEXT",
    "beam_size": "lmtut samples (python -m lmtut.generate --temperature, --top_k); it "
    "has no beam search",
    "tokenizer_model": "the vocabulary is built from the training split (vocab.txt in "
    "the data folder)",
    "save_epoch_freq": "checkpoints are counted in steps: --checkpoint_every",
    "train_dataset": "the splits are WikiText-2's train.txt, valid.txt and test.txt in "
    "--data_dir",
    "eval_dataset": "the splits are WikiText-2's train.txt, valid.txt and test.txt in "
    "--data_dir",
    "local_rank": "torchrun sets LOCAL_RANK in the environment; lmtut reads it there",
}

#: Apex's ``--amp_opt_level`` values as lmtut's precision modes (O3, pure fp16 without
#: master weights, is not taken).
O_LEVELS = {"O0": "fp32", "O1": "amp-fp16", "O2": "amp-fp16"}


# --------------------------------------------------------------------------------------
# Chapter 6: one run configuration, and the named recipes (presets) that override it.
#
# A run is configured by one :class:`RunConfig` made of three dataclasses, each owning
# its defaults and checks: :class:`lmtut.TransformerLMConfig` (the model),
# :class:`lmtut.TrainConfig` (optimization and the loop's schedule) and
# :class:`lmtut.DataConfig` (the corpus and how it is scored). Every setting has one
# name, unique across the three, so that a recipe is a flat dictionary of overrides and
# the command line is ``--name value``.
#
# ``make_config("cpu-demo", max_steps=50)`` builds what ``python -m lmtut.train --preset
# cpu-demo --max_steps 50`` builds: the book's chapters, the benchmarks and the command
# line read their recipes from here and nowhere else.

#: The three parts of a run's configuration.
SECTIONS: dict[str, type] = {
    "model": TransformerLMConfig,
    "train": TrainConfig,
    "data": DataConfig,
}
#: Settings that are not set by hand: the vocabulary size comes from the tokenizer.
DERIVED = ("vocab_size",)

#: The Transformer block of 2017 (chapters 3 to 6) and today's (chapter 7), as settings
#: of TransformerLMConfig.
BLOCK_2017: dict[str, Any] = dict(
    norm="layer", positions="sinusoidal", activation="relu", bias=True, qk_norm=False
)
BLOCK_MODERN: dict[str, Any] = dict(
    norm="rms", positions="rope", activation="swiglu", bias=False, qk_norm=True
)
CPU_2017: dict[str, Any] = dict(
    **BLOCK_2017,
    d_model=256,
    num_layers=2,
    num_attn_heads=4,
    d_inner=1024,
    max_sequence_length=64,
    softmax="adaptive",
    tie_weights=False,
    predict_last_k=32,
    batch_size=32,
    dropout=0.1,
    label_smoothing=0.0,
    optimizer_kind="adamw",
    lr=2e-3,
    weight_decay=0.01,
    lr_policy="cosine",
    warmup_ratio=0.05,
    max_steps=2200,
    eval_every=440,
    checkpoint_every=440,
    log_every=50,
    precision="auto",
)

#: Named recipes: partial overrides of the defaults, by setting name.
PRESETS: dict[str, dict[str, Any]] = {
    # Ten minutes on a 2-core CPU, evaluation included: an adaptive softmax (Grave et
    # al., 2017) for a wider model than a tied full softmax allows in that time (the
    # probes that chose it were not recorded; chapter 4 counts its multiply-adds), and
    # chapter 7's block. Two validations and 2,000 steps fit ten minutes with room to
    # spare for a busy machine. A step budget, never full epochs.
    "cpu-demo": CPU_2017
    | BLOCK_MODERN
    | dict(max_steps=2000, eval_every=1000, checkpoint_every=400),
    # The cpu-demo recipe as chapter 6 first recorded it (results/runs/cpu-demo-2017),
    # with the block of 2017: the model that chapters 4 to 6 and 9 to 10 train and
    # measure.
    "cpu-2017": dict(**CPU_2017),
    # One GPU, 20 epochs (recorded on an H200: see the Results chapter).
    "gpu-base": dict(
        d_model=512,
        num_layers=6,
        num_attn_heads=8,
        d_inner=2048,
        max_sequence_length=256,
        predict_last_k=64,
        batch_size=32,
        dropout=0.3,
        label_smoothing=0.1,
        optimizer_kind="adamw",
        lr=5e-4,
        weight_decay=0.1,
        beta2=0.98,
        lr_policy="cosine",
        warmup_ratio=0.05,
        num_epochs=20,
        eval_every=1000,
        checkpoint_every=1000,
        log_every=100,
        precision="auto",
        vocab_multiple=128,
    ),
    # Chapter 8's small-data laboratory, for the corpus small_corpus(..., fraction=0.05)
    # makes (data_dir=...): 53 steps an epoch, a validation each epoch, no
    # regularization at all; it overfits within a minute on a CPU.
    "cpu-small-data": dict(
        d_model=128,
        num_layers=2,
        num_attn_heads=4,
        d_inner=512,
        max_sequence_length=64,
        softmax="adaptive",
        tie_weights=False,
        predict_last_k=32,
        batch_size=32,
        dropout=0.0,
        label_smoothing=0.0,
        optimizer_kind="adamw",
        lr=2e-3,
        weight_decay=0.0,
        lr_policy="cosine",
        warmup_ratio=0.05,
        num_epochs=16,
        train_eval_tokens=10_000,
        eval_every=53,
        checkpoint_every=10_000,
        log_every=53,
        precision="auto",
    ),
    # Chapter 8's one-GPU recipe against over-fitting, NOT YET MEASURED on a GPU
    # (chapter 8 gives each setting's source and what is unmeasured).
    "gpu-reg": dict(
        d_model=400,
        num_layers=16,
        num_attn_heads=10,
        d_inner=900,
        max_sequence_length=256,
        predict_last_k=64,
        batch_size=32,
        dropout=0.2,
        attn_dropout=0.2,
        ffn_dropout=0.2,
        emb_dropout=0.6,
        word_dropout=0.2,
        output_dropout=0.5,
        locked_dropout=True,
        label_smoothing=0.0,
        optimizer_kind="adamw",
        lr=5e-4,
        weight_decay=0.1,
        beta2=0.98,
        lr_policy="cosine",
        warmup_steps=3000,
        num_epochs=100,
        ema_decay=0.999,
        train_eval_tokens=200_000,
        eval_every=2540,
        checkpoint_every=6350,
        log_every=254,
        precision="auto",
        compile=True,
        vocab_multiple=128,
    ),
    # The NeMo tutorial's defaults; its 50,000-step cosine schedule now ends with the
    # run.
    "nemo": dict(
        d_model=384,
        num_layers=12,
        num_attn_heads=6,
        d_inner=1536,
        max_sequence_length=256,
        predict_last_k=16,
        batch_size=32,
        dropout=0.2,
        label_smoothing=0.1,
        optimizer_kind="novograd",
        lr=0.002,
        beta1=0.95,
        beta2=0.25,
        weight_decay=0.0,
        lr_policy="cosine",
        warmup_ratio=0.02,
        max_steps=50_000,
        eval_every=1000,
        checkpoint_every=1000,
        log_every=100,
    ),
}


def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of a dataclass's source, beside it (``name: type =
    default  # this``) or on the comment lines just above it: the settings'
    documentation, for ``--help`` and for chapter 6's table of flags."""
    comments, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        field = re.match(r"(\w+): [^#]*?(?:#(.*))?$", stripped)
        if field and (field.group(2) or above):
            comments[field.group(1)] = (field.group(2) or " ".join(above)).strip()
        above = []
    return comments


def setting_help() -> dict[str, str]:
    """Every setting's documentation (its field's comment)."""
    docs = {
        "work_dir": "where the run writes config.json, metrics, events, "
        "checkpoints and results.json"
    }
    for cls in SECTIONS.values():
        docs.update(field_comments(cls))
    return docs


def setting_sections() -> dict[str, str]:
    """Every setting's name -> the section that owns it (``model``, ``train``,
    ``data``); ``work_dir`` -> ``run``."""
    owners = {"work_dir": "run"}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if f.name in owners:
                raise TypeError(
                    f"setting {f.name!r} is defined twice "
                    f"({owners[f.name]} and {section})"
                )
            if f.name not in DERIVED:
                owners[f.name] = section
    return owners


@dataclass
class RunConfig:
    """Everything one training run is made of: model, training and data settings, and
    its work dir."""

    model: TransformerLMConfig = field(default_factory=TransformerLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    work_dir: str = "runs/lm"
    preset: str | None = None

    def flat(self) -> dict[str, Any]:
        """Every setting by name (the form of a recipe and of the command line)."""
        values = {"work_dir": self.work_dir}
        for section in SECTIONS:
            values.update(
                {
                    k: v
                    for k, v in asdict(getattr(self, section)).items()
                    if k not in DERIVED
                }
            )
        return values

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, by section (``config.json`` and checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(
            **{s: c(**d.get(s, {})) for s, c in SECTIONS.items()},
            work_dir=d.get("work_dir", cls.work_dir),
            preset=d.get("preset"),
        )


def make_config(
    preset: str | None = None, base: RunConfig | None = None, **overrides: Any
) -> RunConfig:
    """The defaults (or ``base``), then the preset's overrides, then ``overrides``,
    checked; see :data:`PRESETS`."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(
            f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}"
        )
    owners = setting_sections()
    overrides = {NEMO_ALIASES.get(k, k): v for k, v in overrides.items()}
    unknown = sorted(set(overrides) - set(owners))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(unknown)}; the settings are "
            f"{', '.join(sorted(owners))}"
        )
    values = base.flat() if base is not None else {}
    values.update(PRESETS.get(preset, {}))
    values.update(overrides)
    by_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        if owners[name] != "run":
            by_section[owners[name]][name] = value
    return RunConfig(
        **{s: c(**by_section[s]) for s, c in SECTIONS.items()},
        work_dir=values.get("work_dir", RunConfig.work_dir),
        preset=preset or (base.preset if base is not None else None),
    )
