"""Chapter 2: the language-modeling datasets (NeMo's ``LanguageModelDataDesc``, ``LanguageModelingDataset`` and
``LanguageModelingDataLayer``), rebuilt on ``torch.utils.data``.

A split becomes one stream of token ids with ``<eos>`` at every line end. A window of ``max_sequence_length``
positions reads ids ``[left, left + L)`` and predicts ids ``[left + 1, left + L + 1)``; windows start every
``batch_step`` tokens. For training, ``batch_step = L`` tiles the stream without overlap. For evaluation,
``batch_step = k`` (``predict_last_k``) slides the window k tokens at a time and scores only its last k positions,
each of which then sees at least ``L - k`` tokens of context, except in the first window, which scores all its
positions. Every token of the split is scored exactly once, the tail included (the last window is padded).

NeMo 0.x's example evaluated without ``predict_last_k`` and with the label-smoothed loss, so the "perplexity" it
logged averaged every position of overlapping windows under a smoothed loss: not a perplexity. Here the scoring
positions are explicit in the labels (``pad_id`` elsewhere, ignored by the loss).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from lmtut.data import SPLITS, atomic_write_text
from lmtut.tokenizer import WordTokenizer, build_vocab, count_words, write_vocab

DATASETS = ("wikitext-2",)


class LanguageModelDataDesc:
    """Prepares a dataset folder: checks the splits, lower-cases them when asked, writes the vocabulary.

    Attributes (as in NeMo): ``train_file``, ``eval_file``, ``test_file``, ``vocab_file``, ``vocab_size``. The
    vocabulary comes from the training split only (``vocab.txt``, or ``vocab.lower.txt`` with lower-casing).
    """

    def __init__(self, dataset_name: str, data_dir: str | os.PathLike, do_lower_case: bool = False):
        if dataset_name.lower() not in DATASETS:
            raise ValueError(f"unknown dataset {dataset_name!r}; known: {', '.join(DATASETS)}")
        self.data_dir = Path(data_dir)
        missing = [s for s in SPLITS if not (self.data_dir / f"{s}.txt").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.data_dir} lacks {', '.join(s + '.txt' for s in missing)}; "
                "download it first with lmtut.download_wikitext2() or python -m lmtut.data download"
            )
        self.do_lower_case = do_lower_case
        files = {s: self._prepare(s) for s in SPLITS}
        self.train_file, self.eval_file, self.test_file = files["train"], files["valid"], files["test"]
        self.vocab_file = self.data_dir / ("vocab.lower.txt" if do_lower_case else "vocab.txt")
        vocab = build_vocab(count_words(self.train_file))
        if not self.vocab_file.is_file() or self.vocab_file.read_text(encoding="utf-8").split("\n")[:-1] != vocab:
            write_vocab(vocab, self.vocab_file)
        self.vocab_size = len(vocab)

    def _prepare(self, split: str) -> Path:
        src = self.data_dir / f"{split}.txt"
        if not self.do_lower_case:
            return src
        dst = self.data_dir / f"{split}.lower.txt"
        if not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime:
            atomic_write_text(dst, src.read_text(encoding="utf-8").lower())  # "<unk>" stays "<unk>"
        return dst


def num_windows(num_targets: int, max_sequence_length: int, batch_step: int) -> int:
    """How many windows cover ``num_targets`` targets: the first covers L, each next one k more."""
    extra = max(num_targets - max_sequence_length, 0)
    return 1 + -(-extra // batch_step)


class LanguageModelingDataset(Dataset):
    """Windows over one split. Each item is ``(input_ids, input_mask, labels)``, three tensors of length L.

    ``input_mask`` is True at real tokens (False at the padding of the last window); ``labels`` hold the next
    token at scored positions and ``tokenizer.pad_id`` elsewhere. The stream starts with ``<eos>``, as if a line
    had just ended, so that the split's first token is predicted too: ``num_targets`` equals the split's token count.
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
            raise ValueError(f"need max_sequence_length >= 1 and 1 <= batch_step <= max_sequence_length, got {L}, {k}")
        tokens = dataset if isinstance(dataset, torch.Tensor) else tokenizer.encode_file(dataset)
        self.ids = torch.cat([torch.tensor([tokenizer.eos_id]), tokens.long()])
        self.num_targets = len(self.ids) - 1

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


class LanguageModelingDataLayer(DataLoader):
    """NeMo's data layer as a plain ``DataLoader`` of ``(input_ids, input_mask, labels)`` batches.

    Extra keyword arguments (``num_workers``, ``pin_memory``, ``generator``, ``drop_last``, ...) go to ``DataLoader``.
    """

    def __init__(self, dataset: LanguageModelingDataset, batch_size: int, shuffle: bool = False, **kwargs):
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)
