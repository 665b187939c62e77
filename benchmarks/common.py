"""Shared by the benchmarks: model shapes, a synthetic WikiText-2-sized vocabulary,
timing and peak memory.

Benchmarks time the training step on random token ids: the step's cost depends on the
shapes (batch, sequence, vocabulary, model size), not on which words the ids stand for,
so no data needs to be read.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmtut import (  # noqa: E402
    LanguageModelingDataset,
    RunConfig,
    WordTokenizer,
    default_device,  # noqa: E402,F401  (the benchmarks' import)
)
from lmtut.runtime import atomic_write_json  # noqa: E402
from lmtut.runtime import describe_device as device_name  # noqa: E402,F401  (the benchmarks' import)
from lmtut.tokenizer import SPECIAL_TOKENS as SPECIALS  # noqa: E402

# WordTokenizer.vocab_size of WikiText-2 (chapter 2): its word types and the specials
WIKITEXT2_VOCAB = 33_280

#: the presets of lmtut.config whose model and batch shapes the benchmarks time
#: (``make_config(shape)``)
SHAPES = ("cpu-demo", "gpu-base")


def describe_shape(config: RunConfig) -> dict:
    """The figures that set a step's cost: the model's shape and the batch."""
    m = config.model
    return dict(
        d_model=m.d_model,
        num_layers=m.num_layers,
        num_attn_heads=m.num_attn_heads,
        d_inner=m.d_inner,
        max_sequence_length=m.max_sequence_length,
        batch_size=config.train.batch_size,
        softmax=m.softmax,
    )


def synthetic_dataset(
    seq_len: int, windows: int, vocab_size: int = WIKITEXT2_VOCAB, seed: int = 0
) -> LanguageModelingDataset:
    """``windows`` training windows of random word ids over a vocabulary of
    ``vocab_size`` made-up words."""
    tokenizer = WordTokenizer(
        tokens=list(SPECIALS) + [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    )
    ids = torch.randint(
        len(SPECIALS),
        vocab_size,
        (seq_len * windows,),
        generator=torch.Generator().manual_seed(seed),
    )
    return LanguageModelingDataset(tokenizer, ids, seq_len)


def default_shape(device: torch.device) -> str:
    return "gpu-base" if device.type == "cuda" else "cpu-demo"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the peak of memory allocated by tensors; CPU: the process's peak resident
    set size (whole process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def seconds_per_step(step, device: torch.device, steps: int) -> float:
    """Seconds per call of ``step()``, timed over ``steps`` calls with the device's
    queue drained at both ends."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def write_json(path: str | None, payload: dict) -> None:
    """The figures to ``path`` (when given) through the package's atomic writer, and say
    so."""
    if path:
        atomic_write_json(path, payload)
        print(f"wrote {path}")
