"""Chapter 12's benchmark: the lmtut training step against a plain-PyTorch reference,
side by side in one process.

    python benchmarks/throughput.py  # gpu-base shapes on a GPU, cpu-demo on a CPU
    python benchmarks/throughput.py --quick              # a few steps (CI)
    python benchmarks/throughput.py --precision amp-bf16 --json FILE.json

Both sides train the same shapes in the same precision with AdamW and gradient clipping,
and both use a full softmax over the vocabulary (lmtut's tied, the reference's not),
also for a preset whose recipe is adaptive. lmtut's side is ``Trainer.train_step``
itself (the code ``lmtut.train`` runs). The reference is written here from stock pieces:
``nn.TransformerEncoder`` (pre-norm, with a causal mask), an untied ``nn.Linear`` head
and ``F.cross_entropy``. Steps alternate between the two in rounds, and the median round
counts, so that a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from common import (
    SHAPES,
    default_device,
    default_shape,
    describe_shape,
    device_name,
    peak_memory_bytes,
    reset_peak_memory,
    seconds_per_step,
    sync,
    synthetic_dataset,
    write_json,
)
from torch import nn

from lmtut import TrainConfig, Trainer, TransformerLM, TransformerLMConfig, make_config
from lmtut.model import sinusoidal_positions
from lmtut.runtime import Precision

#: dense bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets (without
#: sparsity)
PEAK_BF16 = {
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}


class ReferenceLM(nn.Module):
    """A causal Transformer LM from stock PyTorch modules: what a reader could write
    without this book."""

    def __init__(self, vocab: int, config: TransformerLMConfig):
        super().__init__()
        d_model, num_attn_heads, dropout = (
            config.d_model,
            config.num_attn_heads,
            config.dropout,
        )
        d_inner, num_layers, max_sequence_length = (
            config.d_inner,
            config.num_layers,
            config.max_sequence_length,
        )
        self.embedding = nn.Embedding(vocab, d_model)
        self.register_buffer(
            "positions",
            sinusoidal_positions(max_sequence_length, d_model),
            persistent=False,
        )
        layer = nn.TransformerEncoderLayer(
            d_model, num_attn_heads, d_inner, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, vocab)
        self.drop, self.scale = nn.Dropout(dropout), math.sqrt(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.size(1)
        h = self.drop(self.embedding(ids) * self.scale + self.positions[:T])
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=ids.device)
        return self.head(self.encoder(h, mask=mask, is_causal=True))


def model_flops_per_token(model: TransformerLM) -> float:
    """6 N (forward and backward of every matmul weight, the tied softmax layer
    included) + 12 L d T (attention)."""
    c = model.config
    return (
        6 * model.parameter_counts()["total"]
        + 12 * c.num_layers * c.d_model * c.max_sequence_length
    )


def peak_flops(name: str) -> tuple[float | None, str | None]:
    for key, value in PEAK_BF16.items():
        if all(part in name for part in key.split()):
            return value, key
    return None, None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shape", choices=SHAPES, help="model and batch shapes (default: by device)"
    )
    p.add_argument(
        "--precision", default="fp32", help="fp32, amp-bf16, amp-fp16 (both sides)"
    )
    p.add_argument("--steps", type=int, default=6, help="steps per side per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--quick", action="store_true", help="2 rounds of 2 steps after 1 warm-up step"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile lmtut's model")
    p.add_argument(
        "--vocab-multiple",
        type=int,
        default=None,
        help="pad the vocabulary to a multiple of this (default: the preset's)",
    )
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 2, 2, 1
    device = default_device()
    shape = args.shape or default_shape(device)
    # the reference has a full softmax, so lmtut's side uses the tied full softmax too,
    # whatever the preset's
    config = make_config(
        shape,
        softmax="full",
        tie_weights=True,
        **({"vocab_multiple": args.vocab_multiple} if args.vocab_multiple else {}),
    )
    batch, seq = config.train.batch_size, config.model.max_sequence_length
    dataset = synthetic_dataset(seq, batch)
    vocab = dataset.tokenizer.vocab_size
    model_config = config.model.with_vocab(vocab)
    padded = model_config.padded_vocab_size
    ids, _, labels = (torch.stack(t) for t in zip(*(dataset[i] for i in range(batch))))

    torch.manual_seed(0)
    ours = TransformerLM(model_config)
    cfg = TrainConfig(
        batch_size=batch,
        max_steps=10**9,
        lr=1e-4,
        precision=args.precision,
        compile=args.compile,
        sync_every=10**9,
    )
    trainer = Trainer(ours, dataset, cfg, device=device)
    trainer.wrapped_model.train()

    torch.manual_seed(0)
    ref = ReferenceLM(padded, model_config).to(device).train()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    precision = Precision.of(args.precision, device)
    ref_scaler = precision.grad_scaler()
    ref_ids, ref_labels = ids.to(device), labels.to(device)

    def ours_step():
        trainer.train_step([(ids, None, labels)])

    def ref_step():
        with precision.autocast():
            logits = ref(ref_ids)
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), ref_labels.flatten(), ignore_index=0
            )
        ref_scaler.scale(loss).backward()
        ref_scaler.unscale_(ref_opt)
        nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_scaler.step(ref_opt)
        ref_scaler.update()
        ref_opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"ours": [], "ref": []}
    memory: dict[str, int] = {}
    # warm-up, and each side's peak memory
    for name, step in (("ours", ours_step), ("ref", ref_step)):
        reset_peak_memory(device)
        for _ in range(args.warmup):
            step()
        sync(device)
        memory[name] = peak_memory_bytes(device)
    for _ in range(args.rounds):
        for name, step in (("ours", ours_step), ("ref", ref_step)):
            times[name].append(seconds_per_step(step, device, args.steps))
    tokens = batch * seq
    ours_tps, ref_tps = (tokens / statistics.median(times[k]) for k in ("ours", "ref"))
    name = device_name(device)
    peak, peak_name = peak_flops(name) if device.type == "cuda" else (None, None)
    mfu = ours_tps * model_flops_per_token(ours) / peak if peak else None
    counts = ours.parameter_counts()
    print(
        f"{name}, torch {torch.__version__}, {shape} shapes "
        f"{describe_shape(config)}, vocabulary {vocab:,} padded to "
        f"{padded:,}, precision {trainer.precision.name}"
        + (", torch.compile" if args.compile else "")
    )
    print(
        f"lmtut      {ours_tps:>10,.0f} tokens/s  {counts['total']:>12,} parameters "
        "(tied)"
    )
    print(
        f"reference  {ref_tps:>10,.0f} tokens/s  "
        f"{sum(p.numel() for p in ref.parameters()):>12,} parameters (untied)"
    )
    print(
        f"ratio      {ours_tps / ref_tps:>10.2f}x  (median of {args.rounds} rounds "
        f"of {args.steps} steps each)"
    )
    kind = (
        "peak CUDA memory"
        if device.type == "cuda"
        else ("peak process RSS (both models, one process)")
    )
    print(
        f"{kind}: lmtut {memory['ours'] / 2**20:,.0f} MiB, reference "
        f"{memory['ref'] / 2**20:,.0f} MiB"
    )
    if device.type == "cuda":
        print(
            f"MFU {mfu:.1%} of the {peak_name} dense bf16 peak {peak / 1e12:.0f} "
            "TFLOP/s"
            if mfu
            else f"MFU: no peak known for {name}"
        )
    write_json(
        args.json,
        {
            "device": name,
            "tokens_per_s": ours_tps,
            "reference_tokens_per_s": ref_tps,
            "ratio": ours_tps / ref_tps,
            "mfu": mfu,
            "peak_memory_bytes": memory["ours"],
            "reference_peak_memory_bytes": memory["ref"],
            "peak_flops": peak,
            "shape": shape,
            "precision": trainer.precision.name,
            "compile": args.compile,
            "vocab_padded": padded,
            "torch": torch.__version__,
            "steps": args.steps,
            "rounds": args.rounds,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
