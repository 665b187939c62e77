"""Before a notebook fails: ``python -m lmtut.doctor`` (or ``lmtut-doctor``) says what
this machine can do for the book.

    python -m lmtut.doctor            # one line per check, with a fix under each
    python -m lmtut.doctor --compile  # also compile and run a tiny function
    python -m lmtut.doctor --json     # the checks as a JSON list, for scripts

It checks Python and PyTorch, the device a run would use (``LMTUT_DEVICE``), the GPU
or the CPU and whether it runs bf16 natively, whether ``torch.compile`` can work, the
threads and the free memory, and whether WikiText-2 is in the data folder with the right
sha256. Each check is ``ok``, a ``note`` (worth knowing; the book still runs) or a
``problem`` (a chapter would fail), and every note and problem comes with the one
command that fixes it. The exit status is 1 when any check is a problem, else 0: notes
never change it. Nothing here uses the network.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch._inductor import config as inductor_config

from lmtut.corpus import ENV_ROOT, ENV_URL, SHA256, default_root, sha256_file
from lmtut.runtime import (
    ENV_DEVICE,
    DeviceError,
    cpu_supports_bf16,
    default_device,
    resolve_precision,
)

STATUSES = ("ok", "note", "problem")
MIN_PYTHON = (3, 10)  # pyproject.toml's requires-python
MIN_TORCH = (2, 4)  # pyproject.toml's torch dependency
LOW_MEMORY_GIB = 4.0  # less available memory than this is a note
GIB = 1 << 30
LINE = 88  # the report's width: a terminal's, and the book's code box (setup page)
CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx2")  # the flags worth showing
FIX_DEVICE = f"unset {ENV_DEVICE}  (or: export {ENV_DEVICE}=cpu)"
FIX_DATA = "python -m lmtut.data download"
CUDA_WHEEL = (
    "pip install --force-reinstall torch "
    "--index-url https://download.pytorch.org/whl/cu128"
)


@dataclass(frozen=True)
class Check:
    """One check's result: its name, ``ok`` / ``note`` / ``problem``, what was found,
    and the command that fixes a note or a problem (empty when ``ok``)."""

    name: str
    status: str
    detail: str
    fix: str = ""


# ------------------------------------------------------------------ Python and PyTorch


def version_tuple(version: str) -> tuple[int, ...]:
    """``(2, 13, 0)`` for ``"2.13.0+cpu"`` (the leading numbers of a version)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in match.group(0).split(".")) if match else ()


def check_python() -> Check:
    """The Python version and interpreter; older than pyproject's minimum is a
    problem."""
    found = ".".join(map(str, sys.version_info[:3]))
    detail = f"Python {found} ({sys.executable})"
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", "ok", detail)
    need = ".".join(map(str, MIN_PYTHON))
    return Check(
        "python",
        "problem",
        f"{detail}: lmtut needs Python {need} or newer",
        f"install Python {need}+ and recreate .venv: bash scripts/setup.sh",
    )


def torch_build() -> str:
    """``CUDA 12.8 build``, ``ROCm ... build`` or ``CPU-only build``."""
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda} build"
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip} build"
    return "CPU-only build"


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver, whatever PyTorch's build sees."""
    return NVIDIA_DRIVER.exists() or shutil.which("nvidia-smi") is not None


def check_torch() -> Check:
    """PyTorch's version and build; too old a torch is a problem, a CPU-only build
    beside an NVIDIA driver a note."""
    detail = f"torch {torch.__version__}, {torch_build()}"
    if version_tuple(torch.__version__)[:2] < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        return Check(
            "torch",
            "problem",
            f"{detail}: lmtut needs torch {need} or newer",
            f'pip install --upgrade "torch>={need}"',
        )
    gpu_build = bool(torch.version.cuda or getattr(torch.version, "hip", None))
    if not gpu_build and nvidia_driver_present():
        return Check(
            "torch",
            "note",
            f"{detail}, but this machine has an NVIDIA driver: the GPU goes unused",
            CUDA_WHEEL,
        )
    if gpu_build and not torch.cuda.is_available():
        if nvidia_driver_present():
            return Check(
                "torch",
                "note",
                f"{detail}, but PyTorch sees no GPU although a driver is installed",
                "nvidia-smi  (check the driver and CUDA_VISIBLE_DEVICES)",
            )
        detail += " (no GPU here: runs on the CPU)"
    return Check("torch", "ok", detail)


# --------------------------------------------------------------------------- the device


def check_device() -> tuple[Check, torch.device | None]:
    """The device ``lmtut.runtime.default_device`` picks and why; a bad
    ``LMTUT_DEVICE`` is a problem (and no device is returned)."""
    value = os.environ.get(ENV_DEVICE)
    try:
        device = default_device()
    except (DeviceError, RuntimeError, ValueError) as e:
        return Check("device", "problem", str(e), FIX_DEVICE), None
    if value is not None and value.strip():
        why = f"{ENV_DEVICE}={value!r}"
    elif device.type == "cuda":
        why = f"{ENV_DEVICE} unset; first of {torch.cuda.device_count()} GPU(s)"
    else:
        why = f"{ENV_DEVICE} unset; PyTorch sees no CUDA GPU"
    return Check("device", "ok", f"{device} ({why})"), device


def fallback_device() -> torch.device:
    """The device a run would use once ``LMTUT_DEVICE`` is unset."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_bf16_native(device: torch.device) -> bool:
    """Whether the GPU runs bf16 natively (compute capability 8.0 or newer)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without including_emulation
        return torch.cuda.get_device_capability(device) >= (8, 0)


def check_gpu(device: torch.device) -> Check:
    """The GPU's name, memory, compute capability and native bf16."""
    props = torch.cuda.get_device_properties(device)
    major, minor = torch.cuda.get_device_capability(device)
    bf16 = "bf16 native" if gpu_bf16_native(device) else "no native bf16"
    return Check(
        "hardware",
        "ok",
        f"{props.name}, {props.total_memory / GIB:.1f} GiB, compute capability "
        f"{major}.{minor}, {bf16}: --precision auto picks "
        f"{resolve_precision('auto', device)}",
    )


def cpuinfo() -> dict[str, str]:
    """The first value of each field of ``/proc/cpuinfo`` (empty where there is
    none)."""
    if not CPUINFO.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in CPUINFO.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def check_cpu() -> Check:
    """The CPU's model, the bf16/AVX flags ``/proc/cpuinfo`` shows and native bf16."""
    info = cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    shown = [f for f in CPU_FLAGS if f in flags]
    flag_text = f"flags {' '.join(shown) or 'none of ' + '/'.join(CPU_FLAGS)}"
    if not info:
        flag_text = f"no {CPUINFO}"
    bf16 = "bf16 native" if cpu_supports_bf16() else "no native bf16"
    return Check(
        "hardware",
        "ok",
        f"{name}; {flag_text}; {bf16}: --precision auto picks "
        f"{resolve_precision('auto', 'cpu')}",
    )


# ------------------------------------------------------------------------ torch.compile


def cxx_compiler() -> str | None:
    """The path of the C++ compiler inductor would use on CPU, or None."""
    search = getattr(getattr(inductor_config, "cpp", None), "cxx", None)
    if search is None:  # an inductor without this setting: its usual default
        search = (os.environ.get("CXX", "g++"),)
    if not isinstance(search, (list, tuple)):
        search = (search,)
    found = (shutil.which(cxx) for cxx in search if cxx)
    return next((path for path in found if path), None)


def compile_on_cpu() -> Check:
    """Cheap check: inductor builds CPU kernels with a C++ compiler."""
    cxx = cxx_compiler()
    if cxx:
        return Check("compile", "ok", f"C++ compiler for inductor: {cxx}")
    other = shutil.which("c++") or shutil.which("clang++")
    detail = (
        "no C++ compiler for inductor (g++, or $CXX): torch.compile fails on the "
        "CPU; the book runs without it"
    )
    if other:
        return Check("compile", "note", detail, f"export CXX={other}")
    return Check("compile", "note", detail, "sudo apt-get install g++")


def compile_on_cuda() -> Check:
    """Cheap check: inductor writes GPU kernels in Triton, which builds its launcher
    with a C compiler."""
    if importlib.util.find_spec("triton") is None:
        return Check(
            "compile",
            "note",
            "triton is not installed: torch.compile fails on the GPU "
            "(--preset gpu-reg compiles; add --no-compile)",
            "pip install triton",
        )
    version = importlib.metadata.version("triton")
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return Check(
            "compile",
            "note",
            f"triton {version} is installed, but it finds no C compiler (gcc, "
            "clang or $CC) to build its launcher",
            "sudo apt-get install gcc",
        )
    return Check("compile", "ok", f"triton {version}; C compiler {cc}")


def one_line(error: BaseException, width: int = 160) -> str:
    """``Type: first line of the message``, cut to ``width`` characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


def compile_for_real(device: torch.device) -> Check:
    """``--compile``: compile and run ``x * 2 + 1`` on the device, and time it."""
    start = time.perf_counter()
    try:
        out = torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=device))
        if not torch.equal(out.cpu(), torch.full((4,), 3.0)):
            raise RuntimeError(f"wrong result {out.tolist()}")
    except Exception as e:
        return Check(
            "compile",
            "note",
            f"torch.compile failed on {device}: {one_line(e)}; the book runs without "
            "it",
            check_compile(device).fix or "train with --no-compile",
        )
    seconds = time.perf_counter() - start
    return Check(
        "compile",
        "ok",
        f"torch.compile ran a tiny function on {device} in {seconds:.1f} s",
    )


def check_compile(device: torch.device, run: bool = False) -> Check:
    """Whether ``torch.compile`` can work here: a cheap look by default, a real compile
    with ``run``. Never a problem: the book runs without it."""
    if run:
        return compile_for_real(device)
    return compile_on_cuda() if device.type == "cuda" else compile_on_cpu()


# ------------------------------------------------------------------ threads and memory


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads() -> Check:
    """PyTorch's thread count against the CPUs; a low ``OMP_NUM_THREADS`` is a note."""
    threads, cpus = torch.get_num_threads(), usable_cpus()
    detail = (
        f"PyTorch uses {threads} thread(s); {cpus} usable CPU(s) "
        f"(os.cpu_count() {os.cpu_count()})"
    )
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp is not None and threads < cpus:
        return Check(
            "threads",
            "note",
            f"{detail}: OMP_NUM_THREADS={omp} leaves CPUs idle",
            "unset OMP_NUM_THREADS",
        )
    return Check("threads", "ok", detail)


def mem_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where it is not known)."""
    if not MEMINFO.is_file():
        return None
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # the file counts kB
    return None


def check_memory(device: torch.device) -> Check:
    """Available memory (and free GPU memory on CUDA); under 4 GiB is a note."""
    available = mem_available()
    parts = [
        f"{available / GIB:.1f} GiB available"
        if available is not None
        else f"available memory unknown (no MemAvailable in {MEMINFO})"
    ]
    low = []
    if available is not None and available < LOW_MEMORY_GIB * GIB:
        low.append("free memory: close other programs or idle notebook kernels")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        parts.append(f"GPU {free / GIB:.1f} GiB free of {total / GIB:.1f} GiB")
        if free < LOW_MEMORY_GIB * GIB:
            low.append("nvidia-smi  (find the processes that hold the GPU)")
    if low:
        return Check(
            "memory",
            "note",
            f"{'; '.join(parts)}: under {LOW_MEMORY_GIB:.0f} GiB",
            "; ".join(low),
        )
    return Check("memory", "ok", "; ".join(parts))


# ----------------------------------------------------------------------------- the data


def data_folder() -> Path:
    """Where the package looks for WikiText-2: ``$LMTUT_DATA_DIR/wikitext-2``, by
    default ``~/.cache/lmtut/wikitext-2``."""
    return default_root() / "wikitext-2"


def file_trouble(path: Path) -> str | None:
    """What is wrong with one split file (None when it is there with its sha256)."""
    if not path.is_file():
        return f"{path.name} missing"
    try:
        digest = sha256_file(path)
    except OSError as e:
        return f"{path.name} unreadable ({e.strerror or e})"
    if digest != SHA256[path.name]:
        return (
            f"{path.name} corrupt (sha256 {digest[:12]}..., "
            f"expected {SHA256[path.name][:12]}...)"
        )
    return None


def data_fix() -> str:
    """The download command, with where it will look first."""
    mirror = os.environ.get(ENV_URL)
    if mirror:
        return f"{FIX_DATA}  (tries {ENV_URL}={mirror} first)"
    return f"{FIX_DATA}  (offline: add --url FOLDER_OR_URL, or set {ENV_URL})"


def check_data() -> Check:
    """Whether train/valid/test are in the data folder and match their sha256."""
    folder = data_folder()
    where = f"{folder}" + (f" (${ENV_ROOT})" if os.environ.get(ENV_ROOT) else "")
    troubles = [t for t in (file_trouble(folder / name) for name in SHA256) if t]
    if troubles:
        return Check("data", "problem", f"{'; '.join(troubles)} in {where}", data_fix())
    return Check(
        "data", "ok", f"WikiText-2 verified in {where}: {', '.join(SHA256)} (sha256)"
    )


# --------------------------------------------------------------------- all the checks


def run_checks(compile_run: bool = False) -> list[Check]:
    """Every check, in order. A bad ``LMTUT_DEVICE`` is reported once; the checks that
    need a device then look at the one a run would use once it is unset."""
    device_check, device = check_device()
    device = device or fallback_device()
    hardware = check_gpu(device) if device.type == "cuda" else check_cpu()
    return [
        check_python(),
        check_torch(),
        device_check,
        hardware,
        check_compile(device, run=compile_run),
        check_threads(),
        check_memory(device),
        check_data(),
    ]


def report(checks: list[Check]) -> str:
    """The checks as text: one line each, a fix line under each note or problem, and a
    summary line."""
    width = max(len(c.name) for c in checks)
    indent = " " * (7 + 1 + width + 2)
    lines = []
    for c in checks:
        head = f"{c.status:<7} {c.name:<{width}}  "
        lines += textwrap.wrap(
            c.detail,
            LINE,
            initial_indent=head,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )
        if c.fix:
            lines += textwrap.wrap(
                f"fix: {c.fix}",
                LINE,
                initial_indent=indent,
                subsequent_indent=indent + "     ",
                break_on_hyphens=False,
                break_long_words=False,
            )
    problems = sum(c.status == "problem" for c in checks)
    lines.append(
        f"{problems} problem(s): fix them with the commands above"
        if problems
        else "the book can run here"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmtut.doctor",
        description="Say what this machine can do for the book, and how to fix what "
        "would stop it. Exit status 1 when a check finds a problem.",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile and run a tiny function with torch.compile (seconds to a minute)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the checks as a JSON list"
    )
    args = parser.parse_args(argv)
    checks = run_checks(compile_run=args.compile)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(report(checks))
    return int(any(c.status == "problem" for c in checks))


if __name__ == "__main__":
    sys.exit(main())
