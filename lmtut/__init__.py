"""lmtut: the package behind the book *Transformer language models on WikiText-2, in plain PyTorch*.

Each chapter's reusable code lives in a module of its own and is exported here, at the top level
(``from lmtut import download_wikitext2``). The exports load lazily (PEP 562), so that ``import lmtut`` is
quick and ``python -m lmtut.data`` runs its module once.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: exported name -> the module that defines it (one module per chapter idea)
_EXPORTS = {
    "DataError": "lmtut.data",
    "SplitStats": "lmtut.data",
    "corpus_statistics": "lmtut.data",
    "download_wikitext2": "lmtut.data",
    "split_statistics": "lmtut.data",
    "seed_everything": "lmtut.seed",
    "VocabError": "lmtut.tokenizer",
    "WordTokenizer": "lmtut.tokenizer",
    "build_vocab": "lmtut.tokenizer",
    "LanguageModelDataDesc": "lmtut.datasets",
    "LanguageModelingDataLayer": "lmtut.datasets",
    "LanguageModelingDataset": "lmtut.datasets",
    "CausalSelfAttention": "lmtut.attention",
    "attention_reference": "lmtut.attention",
    "TransformerEncoder": "lmtut.encoder",
    "TokenClassifier": "lmtut.model",
    "TransformerLM": "lmtut.model",
    "TransformerLMConfig": "lmtut.model",
    "PaddedSmoothedCrossEntropyLoss": "lmtut.loss",
    "nll_and_perplexity": "lmtut.loss",
    "evaluate_perplexity": "lmtut.evaluate",
    "quick_train": "lmtut.quicktrain",
    "get_lr_policy": "lmtut.lr_policies",
    "get_optimizer": "lmtut.optimizers",
    "NovoGrad": "lmtut.optimizers",
    "CheckpointError": "lmtut.checkpoint",
    "Callback": "lmtut.callbacks",
    "SimpleLossLoggerCallback": "lmtut.callbacks",
    "EvaluatorCallback": "lmtut.callbacks",
    "CheckpointCallback": "lmtut.callbacks",
    "TrainConfig": "lmtut.trainer",
    "Trainer": "lmtut.trainer",
    "TrainingDiverged": "lmtut.trainer",
    "generate_text": "lmtut.generate",
    "Precision": "lmtut.precision",
    "resolve_precision": "lmtut.precision",
    "init_distributed": "lmtut.distributed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmtut' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # cache: the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
