"""lmtut: the package behind the book *Transformer language models on WikiText-2, in plain PyTorch*.

Each chapter's reusable code lives in a module of its own and is exported here (``from lmtut import
download_wikitext2``). The command lines are modules of their own that this file does not import:
``python -m lmtut.data``, ``lmtut.train``, ``lmtut.evaluate`` and ``lmtut.generate`` (or ``lmtut-data``,
``lmtut-train``, ``lmtut-evaluate``, ``lmtut-generate``).
"""

from lmtut.attention import CausalSelfAttention, attention_reference
from lmtut.cache import cache_scores, tune_cache
from lmtut.calibration import fit_temperature, temperature_log_probs
from lmtut.adaptation import adapt_dynamically, adapt_with_cache, calibrate_temperature
from lmtut.batches import StepBatches
from lmtut.callbacks import Callback, MetricsWriterCallback, SimpleLossLoggerCallback
from lmtut.checkpoint import CheckpointError, RunInfo, TrainingCheckpoint
from lmtut.corpus import DataError, SplitStats, corpus_statistics, download_wikitext2, split_statistics
from lmtut.datasets import (DataConfig, LanguageModelDataDesc, LanguageModelingDataLayer, LanguageModelingDataset,
                            prepare_corpus, split_dataset)
from lmtut.device import DeviceError, default_device, describe_device
from lmtut.distributed import init_distributed
from lmtut.dynamic_eval import KrauseUpdate, dynamic_evaluation, gradient_rms, tune_dynamic_evaluation
from lmtut.ema import WeightAverage
from lmtut.encoder import TransformerBlock, TransformerEncoder
from lmtut.experiment import RunResult, build_datasets, build_model, build_trainer, load_for_inference, prepare, run
from lmtut.loss import PaddedSmoothedCrossEntropyLoss, nll_and_perplexity
from lmtut.lr_policies import get_lr_policy
from lmtut.model import TokenClassifier, TransformerLM
from lmtut.model_config import TransformerLMConfig
from lmtut.optimizers import NovoGrad, get_optimizer
from lmtut.optimization import Optimization
from lmtut.perplexity import evaluate_perplexity
from lmtut.precision import Precision, resolve_precision
from lmtut.progress import Progress
from lmtut.quicktrain import quick_train
from lmtut.recipes import PRESETS, RunConfig, make_config
from lmtut.regularization import LockedDropout, WordDropout
from lmtut.sampling import generate_text
from lmtut.scoring import WindowScores, evaluating, score_windows
from lmtut.seed import seed_everything
from lmtut.source import show_source
from lmtut.stream import ScoredStream, TokenScores, score_stream
from lmtut.tokenizer import VocabError, WordTokenizer, build_vocab
from lmtut.trainer import TrainConfig, Trainer, TrainingDiverged

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
