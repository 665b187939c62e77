"""Chapter 6: checkpoints that survive crashes and load safely.

A checkpoint is written to ``NAME.part``, flushed to disk, and renamed over ``NAME`` in one atomic step
(``lmtut.runtime.atomic_open``), so a crash while saving never destroys the last good checkpoint. Files are
``ckpt-step0001234.pt``; the newest K are kept. What a checkpoint holds is one :class:`TrainingCheckpoint`.
Loading uses ``torch.load(weights_only=True)``: only tensors and plain Python containers, never arbitrary code.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtut.runtime import atomic_open

PATTERN = re.compile(r"ckpt-step(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message says which file and what to do."""


def checkpoint_path(work_dir: str | os.PathLike, step: int) -> Path:
    return Path(work_dir) / "checkpoints" / f"ckpt-step{step:07d}.pt"


def list_checkpoints(work_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints of a work dir, oldest first."""
    folder = Path(work_dir) / "checkpoints"
    found = [p for p in folder.glob("ckpt-step*.pt") if PATTERN.search(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(PATTERN.search(p.name).group(1)))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, keep: int | None = None) -> Path:
    """Write ``state`` atomically to ``path``; then delete all but the newest ``keep`` checkpoints beside it."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    if keep is not None:
        for old in list_checkpoints(path.parent.parent)[:-keep]:
            old.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a damaged file; every one means the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or not an lmtut checkpoint ({first})") from None


def rng_state() -> dict[str, Any]:
    """Every generator's state, as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RunInfo:
    """What a checkpoint needs besides the weights to be used on its own: the run's config and vocabulary."""

    run_config: dict[str, Any]  # RunConfig.to_dict()
    model_config: dict[str, Any]  # the model's TransformerLMConfig, as a dict
    vocab: list[str]  # the tokenizer's id -> token


@dataclass
class TrainingCheckpoint:
    """One checkpoint: the weights (and their moving average), the trainer's state, and the run it belongs to.

    Written by ``Trainer.save_checkpoint``; read by ``Trainer.resume`` and ``lmtut.load_for_inference`` alike.
    """

    model: dict[str, torch.Tensor]  # the model's state_dict
    trainer: dict[str, Any]  # progress, optimization, random generators, train config, precision
    ema: dict[str, Any] | None = None  # the weight average's state (its "model" is the averaged weights)
    run: RunInfo | None = None

    REQUIRED_TRAINER_STATE = ("progress", "optimization", "rng")

    def to_state(self) -> dict[str, Any]:
        """Plain containers and tensors, for ``torch.save`` (and ``torch.load(weights_only=True)``)."""
        return {"model": self.model, "trainer": self.trainer, "ema": self.ema,
                "run": None if self.run is None else asdict(self.run)}

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str = "checkpoint") -> "TrainingCheckpoint":
        if not isinstance(state, dict) or "model" not in state or "trainer" not in state:
            raise CheckpointError(f"{source} is not an lmtut training checkpoint (it lacks the model or the trainer "
                                  "state); train one with python -m lmtut.train")
        missing = [key for key in cls.REQUIRED_TRAINER_STATE if key not in state["trainer"]]
        if missing:
            raise CheckpointError(f"{source} lacks the trainer's {', '.join(missing)}: not an lmtut training "
                                  "checkpoint")
        run = state.get("run")
        return cls(state["model"], state["trainer"], state.get("ema"), RunInfo(**run) if run else None)

    @classmethod
    def read(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "TrainingCheckpoint":
        return cls.from_state(load_checkpoint(path, map_location), str(path))

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights the run evaluated: the moving average when it kept one, else the model's."""
        return self.ema["model"] if self.ema is not None else self.model
