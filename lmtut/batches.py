"""Chapter 6 (and 10): the batches of each optimizer step.

Every epoch has its own seeded order of the training windows, the same on every rank. A step takes the next
``batches_per_step`` global micro-batches of ``batch_size`` windows; each is cut into ``world_size`` consecutive
shares and rank r takes share r. Each of this rank's micro-batches comes with its loss weight: its share of the
step's scored labels over all ranks (times the world size, since DDP averages gradients over ranks), so that
gradient accumulation over micro-batches and ranks gives exactly the gradient of the whole step's mean loss.
"""

from __future__ import annotations

from typing import Iterator

import torch

from lmtut.datasets import LanguageModelingDataLayer, LanguageModelingDataset
from lmtut.distributed import DistInfo

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, input_mask, labels


class StepBatches:
    """The training windows as optimizer steps: ``epoch(e, start)`` yields (micro-batches, loss weights) per step."""

    def __init__(self, dataset: LanguageModelingDataset, batch_size: int, batches_per_step: int = 1, seed: int = 0,
                 world: DistInfo = DistInfo(), num_workers: int = 0, pin_memory: bool = False):
        if batch_size % world.world_size:
            raise ValueError(f"batch_size {batch_size} (the global batch) must divide among {world.world_size} ranks")
        self.dataset, self.seed, self.world = dataset, seed, world
        self.batches_per_step, self.num_workers, self.pin_memory = batches_per_step, num_workers, pin_memory
        self.rank_batch_size = batch_size // world.world_size
        self.windows_per_step = batch_size * batches_per_step
        self.steps_per_epoch = len(dataset) // self.windows_per_step  # the last, partial step of an epoch is dropped
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(dataset)} training windows are fewer than one step's {self.windows_per_step}")
        self.label_counts = dataset.label_counts()  # scored labels per window: the micro-batches' weights

    def shares(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s window indices by step: (step, micro-batch, rank, window)."""
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch))
        used = order[: self.steps_per_epoch * self.windows_per_step]
        return used.view(self.steps_per_epoch, self.batches_per_step, self.world.world_size, self.rank_batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[list[Batch], list[float]]]:
        """Epoch ``epoch``'s steps from step ``start`` of it on: this rank's micro-batches and their loss weights."""
        shares = self.shares(epoch)[start:]
        mine = shares[:, :, self.world.rank].reshape(-1).tolist()
        # The loader gets its own generator: creating an iterator draws a seed, which must not come from the global
        # generator that dropout uses, or a resumed run would draw different dropout masks.
        batches = iter(LanguageModelingDataLayer(self.dataset, self.rank_batch_size, sampler=mine,
                                                 num_workers=self.num_workers,
                                                 generator=torch.Generator().manual_seed(self.seed + epoch),
                                                 pin_memory=self.pin_memory))
        for step_shares in shares:
            yield [next(batches) for _ in range(self.batches_per_step)], self.loss_weights(step_shares)

    def loss_weights(self, step_shares: torch.Tensor) -> list[float]:
        """Each of this rank's micro-batches' share of the step's scored labels (all ranks), times the world size.

        ``step_shares``: the step's window indices, (micro-batch, rank, window).
        """
        counts = self.label_counts[step_shares]  # (micro-batch, rank, window)
        total = max(int(counts.sum()), 1)
        n = self.world.world_size
        return [int(c) * n / total for c in counts[:, self.world.rank].sum(-1)]
