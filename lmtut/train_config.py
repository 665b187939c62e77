"""Chapter 6: the settings of optimization and of the training loop's schedule (a part of ``lmtut.RunConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from lmtut.lr_policies import ALIASES as LR_POLICIES
from lmtut.optimizers import OPTIMIZERS


@dataclass
class TrainConfig:
    """The optimization and the training loop's schedule, under one name each (NeMo's names are aliases on
    the command line: see ``lmtut.nemo_compat``)."""

    batch_size: int = 32  # windows per micro-batch, over all ranks
    batches_per_step: int = 1  # micro-batches per optimizer step: gradient accumulation (NeMo's iter_per_step)
    num_epochs: int = 1  # passes over the training windows (unless max_steps is set)
    max_steps: int | None = None  # overrides num_epochs
    optimizer_kind: str = "adamw"  # adam, adamw, sgd, novograd, or muon (on the blocks' matrices; AdamW on the rest)
    lr: float = 1e-3  # peak learning rate, after the warmup
    weight_decay: float = 0.0  # decoupled (AdamW); never on biases, LayerNorm weights or positions
    beta1: float = 0.9  # Adam's first-moment decay (SGD: momentum)
    beta2: float = 0.999  # Adam's second-moment decay
    muon_lr: float | None = None  # optimizer_kind muon: Muon's peak learning rate (None: lr)
    muon_momentum: float = 0.95  # optimizer_kind muon: Muon's momentum
    lr_policy: str = "cosine"  # constant, cosine, linear or inverse_sqrt
    warmup_ratio: float = 0.05  # linear warmup over this share of the steps (NeMo's lr_warmup_proportion)
    warmup_steps: int | None = None  # or over this many steps (overrides warmup_ratio)
    min_lr_ratio: float = 0.0  # where the decay ends, as a share of lr
    clip_grad_norm: float | None = 1.0  # None or 0: no clipping
    label_smoothing: float = 0.0  # eps of the smoothed training loss (Chapter 5); perplexity is never smoothed
    seed: int = 0  # seeds the weights, dropout and the data order
    num_workers: int = 0  # DataLoader worker processes
    precision: str = "fp32"  # fp32 | amp-fp16 | amp-bf16 | auto | O0 | O1 | O2 (chapter 10)
    sync_every: int | None = None  # read the loss back every N steps (None: log_every on a GPU, 1 on a CPU)
    max_skipped_steps: int = 20  # fp16: stop after this many consecutive steps skipped for overflow
    compile: bool = False  # torch.compile the model (chapter 12)
    log_every: int = 25  # steps between loss records
    eval_every: int = 500  # steps between validations (and one at the end)
    eval_batch_size: int = 32  # windows per evaluation batch
    train_eval_tokens: int = 0  # at each validation also score this many training tokens, as train_ppl (0: off)
    ema_decay: float = 0.0  # keep an exponential moving average of the weights, evaluated and saved (0: off)
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # the newest checkpoints kept

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_rates()
        self._check_choices()

    def _check_counts(self) -> None:
        positive = ["batch_size", "batches_per_step", "num_epochs", "log_every", "eval_every", "eval_batch_size",
                    "checkpoint_every", "keep_checkpoints", "max_skipped_steps"]
        positive += [name for name in ("max_steps", "sync_every", "warmup_steps") if getattr(self, name) is not None]
        for name in positive:
            if getattr(self, name) < (0 if name == "warmup_steps" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.train_eval_tokens < 0:
            raise ValueError(f"train_eval_tokens must be 0 (off) or more, got {self.train_eval_tokens}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")

    def _check_rates(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (0: no averaging), got {self.ema_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")

    def _check_choices(self) -> None:
        if self.optimizer_kind.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer_kind {self.optimizer_kind!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_policy.lower() not in LR_POLICIES:
            raise ValueError(f"unknown lr_policy {self.lr_policy!r}; choose one of constant, cosine, linear, "
                             "inverse_sqrt")
