"""Chapter 6: where a run stands, as one record that checkpoints save and a resumed run continues from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Progress:
    """Steps, epochs, tokens and seconds so far (seconds of training steps only: evaluation and checkpoints
    excluded)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    step_in_epoch: int = 0  # steps done in the current epoch
    tokens_seen: int = 0  # input tokens of the steps done, over all ranks
    train_seconds: float = 0.0

    def advance(self, tokens: int, seconds: float, steps_per_epoch: int) -> None:
        """Count one step of ``tokens`` tokens that took ``seconds``; an epoch ends after ``steps_per_epoch``."""
        self.step += 1
        self.step_in_epoch += 1
        self.tokens_seen += tokens
        self.train_seconds += seconds
        if self.step_in_epoch == steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)
