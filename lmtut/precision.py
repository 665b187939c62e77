"""Chapter 10: mixed precision, NeMo's ``amp_opt_level`` (NVIDIA Apex O0/O1/O2) mapped onto ``torch.amp``.

Modes (Micikevicius et al., 2018, *Mixed Precision Training*):

- ``fp32``: everything in float32 (Apex O0). On NVIDIA Ampere or newer, matmuls use TF32 tensor cores.
- ``amp-fp16``: ``torch.autocast(dtype=float16)`` runs matmuls in float16 while the weights, the optimizer state
  and the reductions (softmax, losses) stay float32; ``torch.amp.GradScaler`` multiplies the loss so that small
  gradients do not underflow fp16's range, skips steps whose gradients overflowed, and adapts the scale (Apex O1).
- ``amp-bf16``: autocast with bfloat16, which has fp32's exponent range, so no loss scaling is needed.

Apex O2 cast the model itself to fp16 and kept fp32 *master weights* for the optimizer. Autocast keeps the
weights in fp32 and casts per operation, so it has master weights by construction: O2 maps onto ``amp-fp16``
(only O2's memory saving on weights is not reproduced). O3 (pure fp16, no master weights) is refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lmtut.nemo_compat import O_LEVELS

PRECISIONS = ("fp32", "amp-fp16", "amp-bf16")
DTYPES = {"fp32": None, "amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}


def cpu_supports_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX-512 BF16 or AMX): there bf16 autocast is the fast CPU mode."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device | str) -> str:
    """``fp32`` / ``amp-fp16`` / ``amp-bf16`` for a mode name, an Apex O-level or ``auto`` on ``device``.

    ``auto``: bf16 on GPUs that support it, else fp16 with loss scaling; on CPU bf16 where the CPU has native bf16,
    else fp32.
    """
    device = torch.device(device)
    key = name.strip()
    if key.upper() in O_LEVELS:
        return O_LEVELS[key.upper()]
    key = key.lower()
    aliases = {"fp16": "amp-fp16", "bf16": "amp-bf16", "float32": "fp32"}
    key = aliases.get(key, key)
    if key == "auto":
        if device.type == "cuda":
            return "amp-bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "amp-fp16"
        return "amp-bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: choose fp32, amp-fp16, amp-bf16, auto, "
                         "or an Apex level O0, O1, O2 (O3, pure fp16 without master weights, is not supported)")
    if key == "amp-fp16" and not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise ValueError(f"autocast is not available on {device.type}; use --precision fp32")
    return key


def enable_tf32(device: torch.device | str) -> bool:
    """Let float32 matmuls and convolutions use TF32 tensor cores on NVIDIA Ampere (sm_80) or newer.

    TF32 keeps fp32's range with a 10-bit mantissa, like fp16's. Returns whether it is now on.
    """
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


@dataclass(frozen=True)
class Precision:
    """One precision mode on one device: the autocast context and the gradient scaler it needs."""

    name: str
    device_type: str

    @classmethod
    def of(cls, name: str, device: torch.device | str) -> "Precision":
        return cls(resolve_precision(name, device), torch.device(device).type)

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES[self.name]

    @property
    def uses_scaler(self) -> bool:
        return self.name == "amp-fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the mixed modes; a no-op context for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A ``GradScaler`` that is enabled for fp16 only (disabled, it passes everything through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_scaler)
