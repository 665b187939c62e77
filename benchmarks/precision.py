"""Chapter 10's benchmark: training-step speed and peak memory of each precision mode on
this device.

    python benchmarks/precision.py  # gpu-base shapes on a GPU, cpu-demo on a CPU
    python benchmarks/precision.py --quick         # a few steps: a smoke test (CI)
    python benchmarks/precision.py --shape cpu-demo --steps 20 --json FILE.json

Each mode runs in a fresh process (so that the CPU's peak resident memory is that mode's
own) through the real ``lmtut.Trainer`` on random token ids with WikiText-2's vocabulary
size. Prints a table and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from common import (
    SHAPES,
    default_device,
    default_shape,
    describe_shape,
    device_name,
    peak_memory_bytes,
    reset_peak_memory,
    sync,
    synthetic_dataset,
    write_json,
)

from lmtut import Callback, TrainConfig, Trainer, TransformerLM, make_config
from lmtut.runtime import PRECISIONS, cpu_supports_bf16


class Clock(Callback):
    """Starts the clock after ``warmup`` steps (compilation, allocator and autotuning
    warm-up excluded)."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.start, self.loss = warmup, device, None, None

    def on_step_end(self, record):
        if record.step == self.warmup:
            sync(self.device)
            reset_peak_memory(self.device)
            self.start = time.perf_counter()
        self.loss = record.loss


def measure(mode: str, shape: str, steps: int, warmup: int) -> dict:
    """Train ``warmup + steps`` steps in ``mode``; tokens/s over the last ``steps``."""
    device = default_device()
    config = make_config(shape)
    batch, seq = config.train.batch_size, config.model.max_sequence_length
    dataset = synthetic_dataset(seq, (warmup + steps) * batch)
    torch.manual_seed(0)
    model = TransformerLM(config.model.with_vocab(dataset.tokenizer.vocab_size))
    clock = Clock(warmup, device)
    cfg = TrainConfig(
        batch_size=batch,
        max_steps=warmup + steps,
        lr=1e-4,
        precision=mode,
        sync_every=warmup + steps,
    )
    trainer = Trainer(model, dataset, cfg, callbacks=[clock], device=device)
    trained = trainer.train()
    sync(device)
    seconds = time.perf_counter() - clock.start
    return {
        "precision": trainer.precision.name,
        "tokens_per_s": steps * batch * seq / seconds,
        "step_ms": 1000 * seconds / steps,
        "peak_memory_bytes": peak_memory_bytes(device),
        "skipped_steps": trained.skipped_steps,
        "final_loss": float(clock.loss),
        "tf32": trainer.tf32,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shape", choices=SHAPES, help="model and batch shapes (default: by device)"
    )
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument(
        "--quick", action="store_true", help="3 timed steps after 1 warm-up step"
    )
    p.add_argument("--json", metavar="FILE", help="write the table as JSON")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=PRECISIONS,
        help="default: every mode this device runs natively",
    )
    # one mode, in this process
    p.add_argument("--child", metavar="MODE", help=argparse.SUPPRESS)
    args = p.parse_args()
    device = default_device()
    shape = args.shape or default_shape(device)
    steps, warmup = (3, 1) if args.quick else (args.steps, args.warmup)
    if args.child:
        print(json.dumps(measure(args.child, shape, steps, warmup)))
        return 0

    modes = args.modes or [m for m in PRECISIONS if _native(m, device)]
    if args.modes is None and "amp-fp16" not in modes:
        print(
            "amp-fp16 left out: this device has no native float16 math (it would be "
            "emulated, many times slower; "
            "--modes amp-fp16 runs it anyway)"
        )
    dims = describe_shape(make_config(shape))
    print(
        f"{device_name(device)}, torch {torch.__version__}, shapes {shape} {dims}, "
        f"{steps} timed steps"
    )
    rows = []
    for mode in modes:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--shape",
            shape,
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{mode}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next(
        (r["tokens_per_s"] for r in rows if r["precision"] == "fp32"),
        rows[0]["tokens_per_s"],
    )
    memory = "peak CUDA memory" if device.type == "cuda" else "peak RSS"
    print(
        f"{'mode':<10} {'tokens/s':>10} {'vs fp32':>8} {'step ms':>8} {memory:>17} "
        f"{'skipped':>8} {'loss':>7}"
    )
    for r in rows:
        r["speedup_vs_fp32"] = r["tokens_per_s"] / base
        print(
            f"{r['precision']:<10} {r['tokens_per_s']:>10,.0f} "
            f"{r['speedup_vs_fp32']:>7.2f}x {r['step_ms']:>8.1f} "
            f"{r['peak_memory_bytes'] / 2**20:>13,.0f} MiB {r['skipped_steps']:>8} "
            f"{r['final_loss']:>7.3f}"
        )
    write_json(
        args.json,
        {
            "device": device_name(device),
            "torch": torch.__version__,
            "shape": shape,
            "dims": dims,
            "steps": steps,
            "warmup": warmup,
            "modes": rows,
        },
    )
    return 0


def _native(mode: str, device: torch.device) -> bool:
    """Whether ``device`` computes in ``mode``'s format natively (an emulated format
    only measures the emulation)."""
    if mode == "fp32":
        return True
    if device.type == "cuda":
        return mode == "amp-fp16" or torch.cuda.is_bf16_supported(
            including_emulation=False
        )
    if mode == "amp-bf16":
        return cpu_supports_bf16()
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: False)())


if __name__ == "__main__":
    sys.exit(main())
