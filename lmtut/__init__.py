"""lmtut: the package behind the book *Transformer language models on WikiText-2, in
plain PyTorch*.

The package is laid out by concern (``model``, ``datasets``, ``trainer``, ``scoring``,
...), and the names the chapters use are exported here (``from lmtut import
download_wikitext2``), grouped below by the chapter that introduces them. The command
lines are modules of their own that this file does not import: ``python -m lmtut.data``,
``lmtut.train``, ``lmtut.evaluate`` and ``lmtut.generate`` (or ``lmtut-data``,
``lmtut-train``, ``lmtut-evaluate``, ``lmtut-generate``).
"""

from lmtut.adapt import (
    adapt_dynamically,
    adapt_with_neural_cache,
    calibrate_temperature,
)
from lmtut.adapt.calibration import fit_temperature, temperature_log_probs
from lmtut.adapt.dynamic import (
    KrauseUpdate,
    dynamic_evaluation,
    gradient_rms,
    tune_dynamic_evaluation,
)
from lmtut.adapt.neural_cache import neural_cache_scores, tune_neural_cache
from lmtut.book import show_source
from lmtut.callbacks import (
    Callback,
    MetricsWriterCallback,
    SimpleLossLoggerCallback,
    StepRecord,
    StopTraining,
)
from lmtut.checkpoint import Checkpointer, CheckpointError, RunInfo, TrainingCheckpoint
from lmtut.config import PRESETS, RunConfig, TrainConfig, make_config
from lmtut.corpus import (
    DataError,
    SplitStats,
    corpus_statistics,
    download_wikitext2,
    split_statistics,
)
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
    VariantRun,
    build_datasets,
    build_model,
    build_trainer,
    load_for_inference,
    prepare,
    quick_train,
    run,
    train_variant,
)
from lmtut.loss import PaddedSmoothedCrossEntropyLoss, nll_and_perplexity, perplexity
from lmtut.model import (
    CausalSelfAttention,
    KVCache,
    LMOutput,
    LockedDropout,
    TokenClassifier,
    TransformerBlock,
    TransformerEncoder,
    TransformerLM,
    TransformerLMConfig,
    WordDropout,
    attention_maps,
    attention_reference,
)
from lmtut.optim import (
    NovoGrad,
    Optimization,
    WeightAverage,
    get_lr_policy,
    get_optimizer,
)
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
from lmtut.trainer import Progress, Trainer, TrainingDiverged, TrainResult

__version__ = "0.1.0"

__all__ = [
    # chapter 1: the corpus
    "DataError",
    "SplitStats",
    "corpus_statistics",
    "download_wikitext2",
    "split_statistics",
    # chapter 2: the word tokenizer and the windows
    "VocabError",
    "WordTokenizer",
    "build_vocab",
    "DataConfig",
    "LanguageModelDataDesc",
    "LanguageModelingDataLayer",
    "LanguageModelingDataset",
    "prepare_corpus",
    "split_dataset",
    # chapter 3: the causal encoder
    "CausalSelfAttention",
    "TransformerBlock",
    "TransformerEncoder",
    "TransformerLMConfig",
    "attention_maps",
    "attention_reference",
    "quick_train",
    # chapter 4: the language model, tied and adaptive softmax
    "LMOutput",
    "TokenClassifier",
    "TransformerLM",
    # chapter 5: label smoothing, and the perplexity always reported
    "PaddedSmoothedCrossEntropyLoss",
    "nll_and_perplexity",
    "perplexity",
    # chapter 6: training, evaluation and sampling
    "PRESETS",
    "RunConfig",
    "TrainConfig",
    "make_config",
    "prepare",
    "build_datasets",
    "build_model",
    "build_trainer",
    "run",
    "RunResult",
    "load_for_inference",
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "Progress",
    "StepBatches",
    "Optimization",
    "NovoGrad",
    "get_optimizer",
    "get_lr_policy",
    "Callback",
    "StepRecord",
    "StopTraining",
    "SimpleLossLoggerCallback",
    "MetricsWriterCallback",
    "Checkpointer",
    "CheckpointError",
    "RunInfo",
    "TrainingCheckpoint",
    "WindowScores",
    "evaluating",
    "score_windows",
    "evaluate_perplexity",
    "generate_text",
    # chapter 7: the modern block and the KV cache; comparing variants of a recipe
    "KVCache",
    "VariantRun",
    "train_variant",
    # chapter 8: regularization
    "LockedDropout",
    "WeightAverage",
    "WordDropout",
    # chapter 9: adapting at test time
    "ScoredStream",
    "TokenScores",
    "score_stream",
    "neural_cache_scores",
    "tune_neural_cache",
    "KrauseUpdate",
    "dynamic_evaluation",
    "gradient_rms",
    "tune_dynamic_evaluation",
    "fit_temperature",
    "temperature_log_probs",
    "adapt_dynamically",
    "adapt_with_neural_cache",
    "calibrate_temperature",
    # chapter 10: mixed precision
    "Precision",
    "resolve_precision",
    # chapters 11 and every chapter: the device, several processes, seeds, the source on
    # the page
    "DeviceError",
    "default_device",
    "describe_device",
    "init_distributed",
    "seed_everything",
    "show_source",
]
