"""Chapter 6: what lmtut keeps of the NeMo tutorial's interface (NeMo 0.x ``transformer_lm.py`` and Apex).

NeMo's flag names that lmtut accepts as aliases of its own, NeMo's flags in their order (for chapter 6's
table), the flags lmtut does not take and what replaced each, and Apex's O-levels as precision modes.
"""

from __future__ import annotations

#: NeMo's (NeMo 0.x ``transformer_lm.py``) flag names, and earlier lmtut names, accepted as aliases.
NEMO_ALIASES: dict[str, str] = {
    "max_seq_length": "max_sequence_length",
    "attn_layer_dropout": "dropout",
    "attn_score_dropout": "attn_dropout",
    "embedding_dropout": "emb_dropout",
    "iter_per_step": "batches_per_step",
    "lr_warmup_proportion": "warmup_ratio",
    "amp_opt_level": "precision",
    "eval_freq": "eval_every",
    "save_step_freq": "checkpoint_every",
    "checkpoint_save_freq": "checkpoint_every",
    "loss_log_freq": "log_every",
}
#: The arguments of NeMo's ``transformer_lm.py`` (NeMo 0.x), in its order, with ``NemoArgParser``'s LR settings.
NEMO_FLAGS = ("train_dataset", "eval_dataset", "work_dir", "optimizer_kind", "amp_opt_level", "num_epochs",
              "batch_size", "eval_batch_size", "lr", "beta1", "beta2", "weight_decay", "warmup_steps", "max_steps",
              "iter_per_step", "eval_freq", "lr_policy", "lr_warmup_proportion", "data_dir", "dataset_name",
              "d_model", "d_inner", "num_layers", "num_attn_heads", "embedding_dropout", "ffn_dropout",
              "attn_score_dropout", "attn_layer_dropout", "max_seq_length", "do_lower_case", "label_smoothing",
              "beam_size", "tokenizer_model", "predict_last_k", "save_epoch_freq", "save_step_freq", "interactive",
              "local_rank")
#: NeMo's flags that lmtut does not take, and what replaced each.
RETIRED_NEMO_FLAGS: dict[str, str] = {
    "interactive": "sample from a checkpoint with python -m lmtut.generate CHECKPOINT --prompt TEXT",
    "beam_size": "lmtut samples (python -m lmtut.generate --temperature, --top_k); it has no beam search",
    "tokenizer_model": "the vocabulary is built from the training split (vocab.txt in the data folder)",
    "save_epoch_freq": "checkpoints are counted in steps: --checkpoint_every",
    "train_dataset": "the splits are WikiText-2's train.txt, valid.txt and test.txt in --data_dir",
    "eval_dataset": "the splits are WikiText-2's train.txt, valid.txt and test.txt in --data_dir",
    "local_rank": "torchrun sets LOCAL_RANK in the environment; lmtut reads it there",
}

#: Apex's ``--amp_opt_level`` values as lmtut's precision modes (O3, pure fp16 without master weights, is not taken).
O_LEVELS = {"O0": "fp32", "O1": "amp-fp16", "O2": "amp-fp16"}
