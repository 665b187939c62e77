"""lmtut: the package behind the book *Transformer language models on WikiText-2, in plain PyTorch*.

Each chapter's reusable code lives in a module of its own and is exported here (``from lmtut import
download_wikitext2``). The command lines are modules of their own that this file does not import:
``python -m lmtut.data``, ``lmtut.train``, ``lmtut.evaluate`` and ``lmtut.generate`` (or ``lmtut-data``,
``lmtut-train``, ``lmtut-evaluate``, ``lmtut-generate``).
"""

from lmtut.adapt import adapt_dynamically, adapt_with_cache, calibrate_temperature
from lmtut.adapt.calibration import fit_temperature, temperature_log_probs
from lmtut.adapt.dynamic import KrauseUpdate, dynamic_evaluation, gradient_rms, tune_dynamic_evaluation
from lmtut.adapt.neural_cache import cache_scores, tune_cache
from lmtut.book import show_source
from lmtut.callbacks import Callback, MetricsWriterCallback, SimpleLossLoggerCallback
from lmtut.checkpoint import CheckpointError, RunInfo, TrainingCheckpoint
from lmtut.config import PRESETS, RunConfig, make_config
from lmtut.corpus import DataError, SplitStats, corpus_statistics, download_wikitext2, split_statistics
from lmtut.datasets import (
                            DataConfig,
                            LanguageModelDataDesc,
                            LanguageModelingDataLayer,
                            LanguageModelingDataset,
                            StepBatches,
                            prepare_corpus,
                            split_dataset,
)
from lmtut.experiment import (
                            RunResult,
                            build_datasets,
                            build_model,
                            build_trainer,
                            load_for_inference,
                            prepare,
                            quick_train,
                            run,
)
from lmtut.loss import PaddedSmoothedCrossEntropyLoss, nll_and_perplexity
from lmtut.model import (
                            CausalSelfAttention,
                            LockedDropout,
                            TokenClassifier,
                            TransformerBlock,
                            TransformerEncoder,
                            TransformerLM,
                            TransformerLMConfig,
                            WordDropout,
                            attention_reference,
)
from lmtut.optim import NovoGrad, Optimization, WeightAverage, get_lr_policy, get_optimizer
from lmtut.runtime import (
                            DeviceError,
                            Precision,
                            default_device,
                            describe_device,
                            init_distributed,
                            resolve_precision,
                            seed_everything,
)
from lmtut.sampling import generate_text
from lmtut.scoring import (
                            ScoredStream,
                            TokenScores,
                            WindowScores,
                            evaluate_perplexity,
                            evaluating,
                            score_stream,
                            score_windows,
)
from lmtut.tokenizer import VocabError, WordTokenizer, build_vocab
from lmtut.trainer import Progress, TrainConfig, Trainer, TrainingDiverged

__version__ = "0.1.0"

__all__ = [
    "Optimization", "Progress", "RunInfo", "RunResult", "StepBatches", "TrainingCheckpoint", "WindowScores",
    "adapt_dynamically", "adapt_with_cache", "calibrate_temperature", "evaluating", "score_windows",
    "KrauseUpdate", "ScoredStream", "TokenScores", "cache_scores", "dynamic_evaluation", "fit_temperature",
    "gradient_rms", "score_stream", "temperature_log_probs", "tune_cache", "tune_dynamic_evaluation",
    "LockedDropout", "WeightAverage", "WordDropout",
    "PRESETS", "Callback", "CausalSelfAttention", "CheckpointError", "DataConfig", "DataError",
    "DeviceError", "LanguageModelDataDesc", "LanguageModelingDataLayer",
    "LanguageModelingDataset", "MetricsWriterCallback", "NovoGrad", "PaddedSmoothedCrossEntropyLoss", "Precision",
    "RunConfig", "SimpleLossLoggerCallback", "SplitStats", "TokenClassifier", "TrainConfig", "Trainer",
    "TrainingDiverged", "TransformerBlock", "TransformerEncoder", "TransformerLM", "TransformerLMConfig",
    "VocabError", "WordTokenizer", "attention_reference", "build_datasets", "build_model", "build_trainer",
    "build_vocab", "corpus_statistics", "default_device", "describe_device", "download_wikitext2",
    "evaluate_perplexity", "generate_text", "get_lr_policy", "get_optimizer", "init_distributed",
    "load_for_inference", "make_config", "nll_and_perplexity", "prepare", "prepare_corpus", "quick_train",
    "resolve_precision", "run", "seed_everything", "show_source", "split_dataset", "split_statistics",
]
