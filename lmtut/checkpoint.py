"""Chapter 6: checkpoints that survive crashes and load safely.

A checkpoint is written to ``NAME.part``, flushed to disk, and renamed over ``NAME`` in
one atomic step (``lmtut.runtime.atomic_open``), so a crash while saving never destroys
the last good checkpoint. Files are ``ckpt-step0001234.pt``; the newest K are kept. What
a checkpoint holds is one :class:`TrainingCheckpoint`. Loading uses
``torch.load(weights_only=True)``: only tensors and plain Python containers, never
arbitrary code.

The :class:`Checkpointer` is handed the run's stateful parts (model, weight average,
optimizer step, progress; the random generators it reads itself) and owns saving,
resuming, keeping the newest K and waiting for every rank, as torchtitan's
``CheckpointManager`` does: the Trainer only says when.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lmtut.runtime import DistInfo, atomic_open, barrier

PATTERN = re.compile(r"ckpt-step(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message says which file and what
    to do."""


def checkpoint_path(work_dir: str | os.PathLike, step: int) -> Path:
    return Path(work_dir) / "checkpoints" / f"ckpt-step{step:07d}.pt"


def list_checkpoints(work_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints of a work dir, oldest first."""
    folder = Path(work_dir) / "checkpoints"
    found = (
        [p for p in folder.glob("ckpt-step*.pt") if PATTERN.search(p.name)]
        if folder.is_dir()
        else []
    )
    return sorted(found, key=lambda p: int(PATTERN.search(p.name).group(1)))


def write_checkpoint(
    state: dict[str, Any], path: str | os.PathLike, keep: int | None = None
) -> Path:
    """Write ``state`` atomically to ``path``; then delete all but the newest ``keep``
    checkpoints beside it."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    if keep is not None:
        for old in list_checkpoints(path.parent.parent)[:-keep]:
            old.unlink()
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    # torch.load fails in many ways on a damaged file; every one means the same here
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt or not an lmtut "
            f"checkpoint ({first})"
        ) from None


def rng_state() -> dict[str, Any]:
    """Every generator's state, as tensors and plain values (loadable with
    ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            pos,
            has_gauss,
            cached,
        ),
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
    """What a checkpoint needs besides the weights to be used on its own: the run's
    config and vocabulary."""

    run_config: dict[str, Any]  # RunConfig.to_dict()
    model_config: dict[str, Any]  # the model's TransformerLMConfig, as a dict
    vocab: list[str]  # the tokenizer's id -> token


@dataclass
class TrainingCheckpoint:
    """One checkpoint: the weights (and their moving average), the trainer's state, and
    the run it belongs to.

    Written by ``Trainer.save_checkpoint``; read by ``Trainer.resume`` and
    ``lmtut.load_for_inference`` alike.
    """

    model: dict[str, torch.Tensor]  # the model's state_dict
    # progress, optimization, random generators, train config, precision
    trainer: dict[str, Any]
    # the weight average's state (its "model" is the averaged weights)
    ema: dict[str, Any] | None = None
    run_info: RunInfo | None = None

    REQUIRED_TRAINER_STATE = ("progress", "optimization", "rng")

    def to_state(self) -> dict[str, Any]:
        """Plain containers and tensors, for ``torch.save`` (and
        ``torch.load(weights_only=True)``)."""
        return {
            "model": self.model,
            "trainer": self.trainer,
            "ema": self.ema,
            "run": None if self.run_info is None else asdict(self.run_info),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], source: str = "checkpoint"
    ) -> "TrainingCheckpoint":
        if (
            not isinstance(state, dict)
            or "model" not in state
            or "trainer" not in state
        ):
            raise CheckpointError(
                f"{source} is not an lmtut training checkpoint (it "
                "lacks the model or the trainer "
                "state); train one with python -m lmtut.train"
            )
        missing = [
            key for key in cls.REQUIRED_TRAINER_STATE if key not in state["trainer"]
        ]
        if missing:
            raise CheckpointError(
                f"{source} lacks the trainer's {', '.join(missing)}: "
                "not an lmtut training "
                "checkpoint"
            )
        run = state.get("run")
        return cls(
            state["model"],
            state["trainer"],
            state.get("ema"),
            RunInfo(**run) if run else None,
        )

    @classmethod
    def read(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> "TrainingCheckpoint":
        return cls.from_state(load_checkpoint(path, map_location), str(path))

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights the run evaluated: the moving average when it kept one, else the
        model's."""
        return self.ema["model"] if self.ema is not None else self.model


def load_weights(
    model: nn.Module, weights: dict[str, torch.Tensor], source: str
) -> None:
    """``model.load_state_dict(weights)``, with a one-line error that names the file
    when they do not fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{source} does not fit this model: {str(e).splitlines()[0]}"
        ) from None


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Checkpointer:
    """Saves a run's stateful parts to ``work_dir/checkpoints`` and restores them (None:
    a run that keeps none).

    ``parts``: ``"progress"`` and ``"optimization"`` (required), ``"average"`` (the
    weights' moving average, when the run keeps one); ``extra``: plain values saved
    beside them (the train config, the precision).
    """

    work_dir: Path | None
    model: nn.Module
    parts: dict[str, Stateful]
    keep: int = 3
    world: DistInfo = field(default_factory=DistInfo)
    run_info: RunInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def snapshot(self, gather_rng: bool = True) -> TrainingCheckpoint:
        """Everything a resume needs. Under torchrun every rank must call it (the random
        generators are gathered) unless ``gather_rng=False``."""
        trainer = {
            "progress": self.parts["progress"].state_dict(),
            "optimization": self.parts["optimization"].state_dict(),
            "rng": rng_state(),
            **self.extra,
        }
        if self.world.world_size > 1 and gather_rng:
            ranks = [None] * self.world.world_size
            # each rank's dropout generator
            dist.all_gather_object(ranks, trainer["rng"])
            trainer["rng_ranks"] = ranks
        average = self.parts.get("average")
        ema = None if average is None else average.state_dict()
        return TrainingCheckpoint(self.model.state_dict(), trainer, ema, self.run_info)

    def save(
        self, step: int, unless_done: bool = False, collective: bool = True
    ) -> Path | None:
        """Write step ``step``'s state atomically (rank 0 writes; every rank waits until
        it is on disk), keeping the newest ``keep``. ``unless_done``: not if saved at
        this step. ``collective=False`` (on Ctrl-C, when other ranks may be gone) saves
        rank 0's state without talking to them."""
        if self.work_dir is None:
            return None
        path = checkpoint_path(self.work_dir, step)
        if unless_done and path.is_file():
            return path
        state = self.snapshot(gather_rng=collective).to_state()
        if self.world.is_main:
            write_checkpoint(state, path, self.keep)
        if collective:
            barrier()
        return path

    def resume(self, device: torch.device) -> bool:
        """Restore the newest checkpoint of the work dir; False when there is none."""
        found = list_checkpoints(self.work_dir) if self.work_dir else []
        if not found:
            return False
        self.restore(TrainingCheckpoint.read(found[-1], device), str(found[-1]))
        return True

    def restore(
        self, checkpoint: TrainingCheckpoint, source: str = "checkpoint"
    ) -> None:
        """Continue from ``checkpoint``: weights, average, optimization, progress and
        random generators."""
        saved = checkpoint.run_info.model_config if checkpoint.run_info else None
        if (
            saved is not None
            and self.run_info is not None
            and saved != self.run_info.model_config
        ):
            raise CheckpointError(
                f"{source} was made for a different model ({saved}); "
                "use the same model arguments or another --work_dir"
            )
        load_weights(self.model, checkpoint.model, source)
        if "average" in self.parts:
            if checkpoint.ema is None:
                raise CheckpointError(
                    f"{source} has no averaged weights (it was "
                    "written with ema_decay 0); resume "
                    "it with --ema_decay 0, or start another "
                    "--work_dir"
                )
            self.parts["average"].load_state_dict(checkpoint.ema)
        state = checkpoint.trainer
        self.parts["optimization"].load_state_dict(state["optimization"])
        self.parts["progress"].load_state_dict(state["progress"])
        ranks = state.get("rng_ranks")
        set_rng_state(
            ranks[self.world.rank]
            if ranks and len(ranks) == self.world.world_size
            else state["rng"]
        )
