"""The data a model reads (chapter 2, and 11 for the ranks): the data config, the corpus
prepared as windows, the batches of evaluation and the batches of each optimizer step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from lmtut.corpus import SPLITS
from lmtut.runtime import DistInfo, atomic_write_text
from lmtut.tokenizer import WordTokenizer, build_vocab, count_words, write_vocab

# --------------------------------------------------------------------------------------
# Chapter 2: the language-modeling datasets (NeMo's ``LanguageModelDataDesc``,
# ``LanguageModelingDataset`` and ``LanguageModelingDataLayer``), rebuilt on
# ``torch.utils.data``.
#
# A split becomes one stream of token ids with ``<eos>`` at every line end. A window of
# ``max_sequence_length`` positions reads ids ``[left, left + L)`` and predicts ids
# ``[left + 1, left + L + 1)``; windows start every ``batch_step`` tokens. For training,
# ``batch_step = L`` tiles the stream without overlap. For evaluation, ``batch_step =
# k`` (``predict_last_k``) slides the window k tokens at a time and scores only its last
# k positions, each of whose targets is then predicted from between ``L - k + 1`` and
# ``L`` input tokens, except in the first window, which scores all its positions. Every
# token of the split is scored exactly once, the tail included (the last window is
# padded).
#
# NeMo 0.x's example built its evaluation windows with ``batch_step=predict_last_k``
# too, but its loss scored every position of every window, so each token was scored up
# to ``L / k`` times (16 with its defaults), under the label-smoothed loss: not a
# perplexity. Here the scoring positions are explicit in the labels (``pad_id``
# elsewhere, ignored by the loss).

DATASETS = ("wikitext-2",)


@dataclass
class DataConfig:
    """Which corpus a run reads and how it is scored (NeMo's ``--dataset_name``,
    ``--data_dir``, ``--do_lower_case`` and ``--predict_last_k``)."""

    dataset_name: str = "wikitext-2"  # the corpus (WikiText-2 is the one lmtut knows)
    # None: download (or find) WikiText-2 with lmtut.download_wikitext2
    data_dir: str | None = None
    do_lower_case: bool = False  # lower-case the splits first (a smaller vocabulary)
    # evaluation windows slide by k and score their last k positions
    predict_last_k: int = 32

    def __post_init__(self) -> None:
        if self.dataset_name.lower() not in DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset_name!r}; known: {', '.join(DATASETS)}"
            )
        if self.predict_last_k < 1:
            raise ValueError(
                f"predict_last_k must be a positive integer, got {self.predict_last_k}"
            )


@dataclass(frozen=True)
class LanguageModelDataDesc:
    """A prepared dataset folder (NeMo's ``LanguageModelDataDesc``): the split files and
    the vocabulary.

    Made by :func:`prepare_corpus`, once per run; reading its fields costs nothing.
    """

    data_dir: Path
    do_lower_case: bool
    train_file: Path
    valid_file: Path
    test_file: Path
    vocab_file: Path
    vocab_size: int

    def split_file(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(
                f"unknown split {split!r}; choose one of {', '.join(SPLITS)}"
            )
        return {
            "train": self.train_file,
            "valid": self.valid_file,
            "test": self.test_file,
        }[split]


def prepare_corpus(
    data_dir: str | os.PathLike,
    do_lower_case: bool = False,
    dataset_name: str = "wikitext-2",
) -> LanguageModelDataDesc:
    """Check the splits, lower-case them when asked, write the vocabulary of the
    training split.

    The vocabulary is ``vocab.txt`` (``vocab.lower.txt`` with lower-casing), rewritten
    only when it differs from the training split's; lower-cased copies are
    ``SPLIT.lower.txt``, rewritten when older than their source.
    """
    if dataset_name.lower() not in DATASETS:
        raise ValueError(
            f"unknown dataset {dataset_name!r}; known: {', '.join(DATASETS)}"
        )
    data_dir = Path(data_dir)
    missing = [s for s in SPLITS if not (data_dir / f"{s}.txt").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{data_dir} lacks {', '.join(s + '.txt' for s in missing)}; "
            "download it first with lmtut.download_wikitext2() or python -m lmtut.data "
            "download"
        )
    files = {
        s: _lower_cased(data_dir / f"{s}.txt")
        if do_lower_case
        else data_dir / f"{s}.txt"
        for s in SPLITS
    }
    vocab_file = data_dir / ("vocab.lower.txt" if do_lower_case else "vocab.txt")
    vocab = build_vocab(count_words(files["train"]))
    if (
        not vocab_file.is_file()
        or vocab_file.read_text(encoding="utf-8").split("\n")[:-1] != vocab
    ):
        write_vocab(vocab, vocab_file)
    return LanguageModelDataDesc(
        data_dir,
        do_lower_case,
        files["train"],
        files["valid"],
        files["test"],
        vocab_file,
        len(vocab),
    )


def _lower_cased(src: Path) -> Path:
    dst = src.with_suffix(".lower.txt")
    if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
        # "<unk>" stays "<unk>"
        atomic_write_text(dst, src.read_text(encoding="utf-8").lower())
    return dst


def num_windows(num_targets: int, max_sequence_length: int, batch_step: int) -> int:
    """How many windows cover ``num_targets`` targets: the first covers L, each next one
    k more."""
    extra = max(num_targets - max_sequence_length, 0)
    return 1 + -(-extra // batch_step)


class LanguageModelingDataset(Dataset):
    """Windows over one split. Each item is ``(input_ids, input_mask, labels)``, three
    tensors of length L.

    ``input_mask`` is True at real tokens (False at the padding of the last window);
    ``labels`` hold the next token at scored positions and ``tokenizer.pad_id``
    elsewhere. The stream starts with ``<eos>``, as if a line had just ended, so that
    the split's first token is predicted too: ``num_targets`` equals the split's token
    count.
    """

    def __init__(
        self,
        tokenizer: WordTokenizer,
        dataset: str | os.PathLike | torch.Tensor,
        max_sequence_length: int = 256,
        batch_step: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.max_sequence_length = L = max_sequence_length
        self.batch_step = k = batch_step or max_sequence_length
        if L < 1 or not 1 <= k <= L:
            raise ValueError(
                f"need max_sequence_length >= 1 and 1 <= batch_step <= "
                f"max_sequence_length, got {L}, {k}"
            )
        tokens = (
            dataset
            if isinstance(dataset, torch.Tensor)
            else tokenizer.encode_file(dataset)
        )
        self.ids = torch.cat([torch.tensor([tokenizer.eos_id]), tokens.long()])
        self.num_targets = len(self.ids) - 1
        self.pad_id = tokenizer.pad_id  # the label of positions that are not scored
        self._label_counts: torch.Tensor | None = None

    def __len__(self) -> int:
        return num_windows(self.num_targets, self.max_sequence_length, self.batch_step)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        L, k, pad = self.max_sequence_length, self.batch_step, self.tokenizer.pad_id
        left = idx * k
        inputs = self.ids[left : left + L]
        labels = self.ids[left + 1 : left + L + 1].clone()
        if idx > 0:
            labels[: L - k] = pad  # scored already by the previous window
        n = len(inputs)
        if n < L:  # the last window: pad inputs, labels and mask to L
            inputs = torch.cat([inputs, inputs.new_full((L - n,), pad)])
        if len(labels) < L:
            labels = torch.cat([labels, labels.new_full((L - len(labels),), pad)])
        mask = torch.arange(L) < n
        return inputs, mask, labels

    def first(
        self, n: int | None, batch_step: int | None = None
    ) -> "LanguageModelingDataset":
        """Windows over this split's first ``n`` tokens (all of them for None), of the
        same length and, unless ``batch_step`` is given, the same step."""
        k = batch_step or self.batch_step
        if (n is None or n >= self.num_targets) and k == self.batch_step:
            return self
        return LanguageModelingDataset(
            self.tokenizer,
            self.ids[1 : (n or self.num_targets) + 1],
            self.max_sequence_length,
            k,
        )

    def label_counts(self) -> torch.Tensor:
        """How many positions each window scores (its labels that are not ``pad_id``),
        as an int64 tensor.

        Window ``i`` scores positions ``[L - k, min(L, num_targets - i k))`` (the first
        window from 0). Computed once; the Trainer uses it to weight micro-batches
        without reading the windows.
        """
        if self._label_counts is None:
            L, k = self.max_sequence_length, self.batch_step
            left = torch.arange(len(self)) * k
            first = torch.where(left == 0, 0, L - k)
            end = (self.num_targets - left).clamp(max=L)
            counts = (end - first).clamp(min=0)
            # a pad id inside the text is never scored either
            if bool((self.ids[1:] == self.pad_id).any()):
                counts = torch.tensor(
                    [int((self[i][2] != self.pad_id).sum()) for i in range(len(self))]
                )
            self._label_counts = counts
        return self._label_counts


def split_dataset(
    corpus: LanguageModelDataDesc,
    tokenizer: WordTokenizer,
    split: str,
    max_sequence_length: int,
    batch_step: int | None = None,
    max_tokens: int | None = None,
) -> LanguageModelingDataset:
    """Windows over one split of a prepared corpus: training windows
    (``batch_step=None``) or ``predict_last_k`` evaluation windows (``batch_step=k``);
    ``max_tokens`` keeps only the split's first tokens."""
    tokens = tokenizer.encode_file(corpus.split_file(split))
    return LanguageModelingDataset(
        tokenizer, tokens[:max_tokens], max_sequence_length, batch_step
    )


class LanguageModelingDataLayer(DataLoader):
    """NeMo's data layer as a plain ``DataLoader`` of ``(input_ids, input_mask,
    labels)`` batches.

    Extra keyword arguments (``num_workers``, ``pin_memory``, ``generator``,
    ``drop_last``, ...) go to ``DataLoader``.
    """

    def __init__(
        self,
        dataset: LanguageModelingDataset,
        batch_size: int,
        shuffle: bool = False,
        **kwargs,
    ):
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)


# --------------------------------------------------------------------------------------
# Chapter 6 (and 10): the batches of each optimizer step.
#
# Every epoch has its own seeded order of the training windows, the same on every rank.
# A step takes the next ``batches_per_step`` global micro-batches of ``batch_size``
# windows; each is cut into ``world_size`` consecutive shares and rank r takes share r.
# Each of this rank's micro-batches comes with its loss weight: its share of the step's
# scored labels over all ranks (times the world size, since DDP averages gradients over
# ranks), so that gradient accumulation over micro-batches and ranks gives exactly the
# gradient of the whole step's mean loss.

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, input_mask, labels


class StepBatches:
    """The training windows as optimizer steps: ``epoch(e, start)`` yields
    (micro-batches, loss weights) per step."""

    def __init__(
        self,
        dataset: LanguageModelingDataset,
        batch_size: int,
        batches_per_step: int = 1,
        seed: int = 0,
        world: DistInfo = DistInfo(),
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        if batch_size % world.world_size:
            raise ValueError(
                f"batch_size {batch_size} (the global batch) must divide "
                f"among {world.world_size} ranks"
            )
        self.dataset, self.seed, self.world = dataset, seed, world
        self.batches_per_step, self.num_workers, self.pin_memory = (
            batches_per_step,
            num_workers,
            pin_memory,
        )
        self.rank_batch_size = batch_size // world.world_size
        self.windows_per_step = batch_size * batches_per_step
        # the last, partial step of an epoch is dropped
        self.steps_per_epoch = len(dataset) // self.windows_per_step
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(dataset)} training windows are fewer than one "
                f"step's {self.windows_per_step}"
            )
        # scored labels per window: the micro-batches' weights
        self.label_counts = dataset.label_counts()

    def window_indices(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s window indices by step: (step, micro-batch, rank,
        window)."""
        order = torch.randperm(
            len(self.dataset),
            generator=torch.Generator().manual_seed(self.seed + epoch),
        )
        used = order[: self.steps_per_epoch * self.windows_per_step]
        return used.view(
            self.steps_per_epoch,
            self.batches_per_step,
            self.world.world_size,
            self.rank_batch_size,
        )

    def epoch(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[list[Batch], list[float]]]:
        """Epoch ``epoch``'s steps from step ``start`` of it on: this rank's
        micro-batches and their loss weights."""
        steps = self.window_indices(epoch)[start:]
        this_rank = steps[:, :, self.world.rank].reshape(-1).tolist()
        # The loader gets its own generator: creating an iterator draws a seed, which
        # must not come from the global generator that dropout uses, or a resumed run
        # would draw different dropout masks.
        batches = iter(
            LanguageModelingDataLayer(
                self.dataset,
                self.rank_batch_size,
                sampler=this_rank,
                num_workers=self.num_workers,
                generator=torch.Generator().manual_seed(self.seed + epoch),
                pin_memory=self.pin_memory,
            )
        )
        for step_windows in steps:
            yield (
                [next(batches) for _ in range(self.batches_per_step)],
                self.loss_weights(step_windows),
            )

    def loss_weights(self, step_windows: torch.Tensor) -> list[float]:
        """Each of this rank's micro-batches' share of the step's scored labels (all
        ranks), times the world size.

        ``step_windows``: the step's window indices, (micro-batch, rank, window).
        """
        counts = self.label_counts[step_windows]  # (micro-batch, rank, window)
        total = max(int(counts.sum()), 1)
        n = self.world.world_size
        return [int(c) * n / total for c in counts[:, self.world.rank].sum(-1)]
