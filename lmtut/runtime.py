"""Where and how a run runs: atomic files, seeds, the device, torchrun, mixed precision,
Ctrl-C between steps, and a result's provenance. Nothing here knows the model or the
data.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

# --------------------------------------------------------------------------------------
# Writing files so that a crash never leaves a torn one: the one atomic-write helper of
# the package.
#
# Downloads, vocabularies, lower-cased splits, checkpoints and rewritten metrics all go
# through :func:`atomic_open`: the data goes to ``NAME.part`` beside the target, is
# flushed and ``fsync``-ed, optionally checked, and only then renamed over ``NAME`` with
# ``os.replace`` (atomic on POSIX and Windows). An interrupted or refused write deletes
# the ``.part`` file and leaves the old ``NAME``, if any, untouched.


@contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "wb",
    check: Callable[[Path], None] | None = None,
) -> Iterator[IO[Any]]:
    """``with atomic_open(path, "w") as f: ...`` writes ``path`` all at once or not at
    all.

    ``check(part_path)`` runs on the finished, synced file before the rename; raising
    there refuses the file.
    """
    if not any(c in mode for c in "wx") or "+" in mode:
        raise ValueError(
            f"atomic_open writes a new file: mode 'w' or 'wb', got {mode!r}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with open(part, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(part)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, payload: Any, indent: int = 2) -> Path:
    """Write ``payload`` as indented JSON, with a final newline, to ``path`` atomically
    (its folder made)."""
    return atomic_write_text(path, json.dumps(payload, indent=indent) + "\n")


# --------------------------------------------------------------------------------------
# One helper seeds every random number generator a chapter uses, so that notebooks are
# deterministic.


def seed_everything(seed: int = 0) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every GPU).

    Every notebook calls this once at the top, and the tests rely on it for
    ``torch.manual_seed``-exact runs.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA on every device
    # for subprocesses (the hash seed of this one is fixed at start)
    os.environ["PYTHONHASHSEED"] = str(seed)


# --------------------------------------------------------------------------------------
# Which device a run uses, in one place: ``default_device()``, honouring
# ``LMTUT_DEVICE``.
#
# ``LMTUT_DEVICE=cpu`` keeps everything on the CPU on a GPU machine (the tests' CPU
# path); ``cuda`` or ``cuda:N`` asks for a GPU and fails clearly where there is none.
# Unset, the first GPU is used when there is one.

ENV_DEVICE = "LMTUT_DEVICE"


class DeviceError(RuntimeError):
    """A device was asked for that this machine does not have."""


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def default_device() -> torch.device:
    """``$LMTUT_DEVICE`` if set (``cpu``, ``cuda``, ``cuda:N``), else ``cuda`` when
    available, else ``cpu``."""
    name = os.environ.get(ENV_DEVICE, "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(
            f"{ENV_DEVICE}={name!r} is not a device; use cpu, cuda or cuda:N"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{ENV_DEVICE}={name!r}: lmtut runs on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{ENV_DEVICE}={name!r} but PyTorch sees no CUDA GPU "
                "here "
                f"(torch {torch.__version__}); unset it or set "
                f"{ENV_DEVICE}=cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{ENV_DEVICE}={name!r} but this machine has "
                f"{torch.cuda.device_count()} GPU(s)"
            )
    return device


def describe_device(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name and the threads PyTorch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        if cpuinfo.is_file()
        else []
    )
    threads = torch.get_num_threads()
    name = names[0] if names else platform.processor() or platform.machine()
    return f"{name}, {threads} thread{'s' * (threads > 1)}"


# --------------------------------------------------------------------------------------
# Chapter 11: data-parallel training with ``torchrun`` and ``torch.distributed`` (NeMo's
# ``local_rank``).
#
# ``torchrun --nproc_per_node=N -m lmtut.train ...`` starts N processes and gives each
# the environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
# and ``MASTER_PORT``. ``init_distributed`` reads them, joins the process group (NCCL on
# GPUs, Gloo on CPU) and picks this process's device. A plain ``python -m lmtut.train``
# has none of them and runs as a world of one.


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return (rank info, this
    process's device).

    The device type defaults to :func:`lmtut.default_device`'s (``LMTUT_DEVICE=cpu``
    trains on CPUs with Gloo on a GPU machine). The backend follows the device: ``nccl``
    for CUDA (one GPU per process, ``cuda:LOCAL_RANK``), ``gloo`` for CPU.
    """
    default = default_device()
    device_type = device_type or default.type
    if not launched_by_torchrun():
        return DistInfo(), default if default.type == device_type else torch.device(
            device_type
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only "
                f"{torch.cuda.device_count()} GPUs: "
                "use --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend, device_id=device if device_type == "cuda" else None
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend), device


def world() -> DistInfo:
    """The current process group's rank and size (a world of one when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", 0)),
        dist.get_backend(),
    )


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a world of one)."""
    if world().world_size > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# Chapter 10: mixed precision, NeMo's ``amp_opt_level`` (NVIDIA Apex O0/O1/O2) mapped
# onto ``torch.amp``.
#
# Modes (Micikevicius et al., 2018, *Mixed Precision Training*):
#
# - ``fp32``: everything in float32 (Apex O0). On NVIDIA Ampere or newer, matmuls use
#   TF32 tensor cores.
# - ``amp-fp16``: ``torch.autocast(dtype=float16)`` runs matmuls in float16 while the
#   weights, the optimizer state and the reductions (softmax, losses) stay float32;
#   ``torch.amp.GradScaler`` multiplies the loss so that small gradients do not
#   underflow fp16's range, skips steps whose gradients overflowed, and adapts the scale
#   (Apex O1).
# - ``amp-bf16``: autocast with bfloat16, which has fp32's exponent range, so no loss
#   scaling is needed.
#
# Apex O2 cast the model itself to fp16 and kept fp32 *master weights* for the
# optimizer, and ran the whole forward in fp16, softmax and reductions included.
# Autocast keeps the weights in fp32 and casts per operation, so it has master weights
# by construction and keeps its fp32 list of operations: O2 maps onto ``amp-fp16``,
# without O2's all-fp16 forward. O3 (pure fp16, no master weights) is refused.

PRECISIONS = ("fp32", "amp-fp16", "amp-bf16")
#: Short names of the modes, accepted wherever a mode is.
PRECISION_ALIASES = {"fp16": "amp-fp16", "bf16": "amp-bf16", "float32": "fp32"}
DTYPES = {"fp32": None, "amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}


def cpu_supports_bf16() -> bool:
    """True where oneDNN reports bf16 support: CPUs with AVX-512 (BW, VL, DQ) and up,
    natively where they also have AVX-512 BF16 or AMX, emulated on older AVX-512 CPUs.
    ``--precision auto`` picks bf16 on the CPU where this is True."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device | str) -> str:
    """``fp32`` / ``amp-fp16`` / ``amp-bf16`` for a mode name (or ``fp16``, ``bf16``,
    ``float32``) or ``auto`` on ``device`` (Apex's O-levels are the config's to map).

    ``auto``: bf16 on GPUs that support it, else fp16 with loss scaling; on CPU bf16
    where oneDNN reports bf16 support (:func:`cpu_supports_bf16`), else fp32.
    """
    device = torch.device(device)
    key = name.strip().lower()
    key = PRECISION_ALIASES.get(key, key)
    if key == "auto":
        if device.type == "cuda":
            return (
                "amp-bf16"
                if torch.cuda.is_bf16_supported(including_emulation=False)
                else "amp-fp16"
            )
        return "amp-bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"
    if key not in PRECISIONS:
        raise ValueError(
            f"unknown precision {name!r}: choose fp32, amp-fp16, amp-bf16 or auto"
        )
    if key == "amp-fp16" and not torch.amp.autocast_mode.is_autocast_available(
        device.type
    ):
        raise ValueError(
            f"autocast is not available on {device.type}; use --precision fp32"
        )
    return key


def enable_tf32(device: torch.device | str) -> bool:
    """Let float32 matmuls and convolutions use TF32 tensor cores on NVIDIA Ampere
    (sm_80) or newer.

    TF32 keeps fp32's range with a 10-bit mantissa, like fp16's. Returns whether it is
    now on.
    """
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


@dataclass(frozen=True)
class Precision:
    """One precision mode on one device: the autocast context and the gradient scaler it
    needs."""

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
        """A ``GradScaler`` that is enabled for fp16 only (disabled, it passes
        everything through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_scaler)


# --------------------------------------------------------------------------------------
# Chapter 6: Ctrl-C between steps, never inside one.
#
# A ``KeyboardInterrupt`` raised in the middle of a training step could leave the model
# updated but the step not counted, or the random generators past this step's dropout
# draws: a checkpoint written then would not resume exactly. Inside
# :func:`deferred_interrupts`, SIGINT only takes note in the list it yields; the trainer
# raises the interrupt once the step, its callbacks, its evaluation and its checkpoint
# are done, where the state is whole.


@contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Within the block, SIGINT is noted in the yielded list instead of raising (main
    thread only).

    After the block, Ctrl-C raises ``KeyboardInterrupt`` as usual; the caller raises it
    for a noted one.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(
        signal.SIGINT, lambda signum, frame: received.append(signum)
    )
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------------
# What a result file records about where it came from: the commit, PyTorch and the
# device.


def git_commit() -> str | None:
    """The checkout's commit (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def provenance(device: torch.device) -> dict[str, Any]:
    """The device, its name, PyTorch's version and the commit, for ``results.json`` and
    benchmark files."""
    return {
        "device": str(device),
        "device_name": describe_device(device),
        "torch": torch.__version__,
        "git_commit": git_commit(),
    }
