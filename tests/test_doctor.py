"""``python -m lmtut.doctor``: the checks on this machine, with the data folder and the
environment made up in each test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmtut import doctor
from lmtut.corpus import ENV_ROOT, ENV_URL, SHA256

ROOT = Path(__file__).resolve().parents[1]
NAMES = {
    "python",
    "torch",
    "device",
    "hardware",
    "compile",
    "threads",
    "memory",
    "data",
}


@pytest.fixture
def machine(monkeypatch):
    """The CPU, no OMP_NUM_THREADS and no mirror: only the data decides the outcome."""
    monkeypatch.setenv("LMTUT_DEVICE", "cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(ENV_URL, raising=False)


@pytest.fixture
def verified(wikitext2_dir, tmp_path, monkeypatch, machine):
    """An ``LMTUT_DATA_DIR`` whose ``wikitext-2`` links to the verified files."""
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for name in SHA256:
        (folder / name).symlink_to(wikitext2_dir / name)
    monkeypatch.setenv(ENV_ROOT, str(tmp_path))
    return folder


@pytest.fixture
def empty(tmp_path, monkeypatch, machine):
    """An ``LMTUT_DATA_DIR`` with no data in it."""
    monkeypatch.setenv(ENV_ROOT, str(tmp_path))
    return tmp_path / "wikitext-2"


def by_name(checks):
    return {c["name"]: c for c in checks}


def test_verified_data_runs(verified, capsys):
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert "WikiText-2 verified in " + str(verified) in " ".join(out.split())
    assert out.rstrip().splitlines()[-1] == "the book can run here"
    assert "problem" not in out


def test_missing_data_names_the_download(empty, capsys):
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "problem data" in out and "train.txt missing" in out
    assert "fix: python -m lmtut.data download" in out
    assert out.rstrip().splitlines()[-1].startswith("1 problem(s)")


def test_mirror_is_named_in_the_fix(empty, monkeypatch):
    monkeypatch.setenv(ENV_URL, "/some/mirror")
    check = doctor.check_data()
    assert check.status == "problem" and f"{ENV_URL}=/some/mirror" in check.fix


def test_corrupt_file_is_named(verified, capsys):
    (verified / "valid.txt").unlink()
    (verified / "valid.txt").write_text("not WikiText-2\n")
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "valid.txt corrupt" in out and "train.txt missing" not in out
    assert "python -m lmtut.data download" in out


def test_bad_device_is_a_problem(verified, monkeypatch, capsys):
    monkeypatch.setenv("LMTUT_DEVICE", "tpu")
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "problem device" in out and "'tpu'" in out
    assert "fix: unset LMTUT_DEVICE" in out and "LMTUT_DEVICE=cpu" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_problem(verified, monkeypatch, capsys):
    monkeypatch.setenv("LMTUT_DEVICE", "cuda")
    assert doctor.main(["--json"]) == 1
    device = by_name(json.loads(capsys.readouterr().out))["device"]
    assert device["status"] == "problem" and "no CUDA GPU" in device["detail"]
    assert device["fix"].startswith("unset LMTUT_DEVICE")


def test_json_holds_every_check(verified, capsys):
    assert doctor.main(["--json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert set(by_name(checks)) == NAMES and len(checks) == len(NAMES)
    for c in checks:
        assert set(c) == {"name", "status", "detail", "fix"}
        assert c["status"] in doctor.STATUSES
        assert bool(c["fix"]) == (c["status"] != "ok"), c
    assert by_name(checks)["data"]["status"] == "ok"


def test_notes_never_fail(verified, monkeypatch, capsys):
    """No compiler, little memory and a low OMP_NUM_THREADS are notes: exit 0."""
    monkeypatch.setattr(doctor, "cxx_compiler", lambda: None)
    meminfo = verified.parent / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 1048576 kB\n")
    monkeypatch.setattr(doctor, "MEMINFO", meminfo)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(doctor, "usable_cpus", lambda: torch.get_num_threads() + 1)
    assert doctor.main(["--json"]) == 0
    checks = by_name(json.loads(capsys.readouterr().out))
    assert checks["compile"]["status"] == "note" and checks["compile"]["fix"]
    assert (
        checks["memory"]["status"] == "note" and "1.0 GiB" in checks["memory"]["detail"]
    )
    assert checks["threads"]["fix"] == "unset OMP_NUM_THREADS"


def test_compile_flag_reports_time_or_error(verified, monkeypatch):
    """``--compile`` times a real call; a failure is a one-line note (torch.compile
    stubbed: a real compile takes seconds)."""
    monkeypatch.setattr(torch, "compile", lambda fn: fn)
    ok = doctor.check_compile(torch.device("cpu"), run=True)
    assert ok.status == "ok" and " s" in ok.detail

    def broken(fn):
        raise RuntimeError("no compiler\nlong traceback")

    monkeypatch.setattr(torch, "compile", broken)
    note = doctor.check_compile(torch.device("cpu"), run=True)
    assert note.status == "note" and "RuntimeError: no compiler" in note.detail
    assert "traceback" not in note.detail and note.fix


def test_cpu_flags_from_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU 9000\nflags\t\t: fpu avx2 amx_bf16\n")
    monkeypatch.setattr(doctor, "CPUINFO", cpuinfo)
    check = doctor.check_cpu()
    assert "Test CPU 9000" in check.detail and "flags amx_bf16 avx2" in check.detail


def test_version_tuple():
    assert doctor.version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert doctor.version_tuple("2.5.0a0+git1234") == (2, 5, 0)


def test_runs_as_a_module(verified):
    result = subprocess.run(
        [sys.executable, "-m", "lmtut.doctor", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert by_name(json.loads(result.stdout))["data"]["status"] == "ok"


def test_the_package_does_not_import_it():
    code = "import sys, lmtut; print('lmtut.doctor' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr


def test_gpu_lines_with_a_fake_gpu(monkeypatch):
    """The GPU's checks, with torch.cuda's answers made up (runs without a GPU)."""
    props = type("Props", (), {"name": "Fake H100", "total_memory": 80 * doctor.GIB})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: True)
    free = (2 * doctor.GIB, 80 * doctor.GIB)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: free)
    gpu = torch.device("cuda")
    hardware = doctor.check_gpu(gpu)
    assert "Fake H100, 80.0 GiB, compute capability 9.0, bf16 native" in hardware.detail
    assert "amp-bf16" in hardware.detail
    memory = doctor.check_memory(gpu)
    assert memory.status == "note" and "GPU 2.0 GiB free" in memory.detail
    assert "nvidia-smi" in memory.fix


def test_compile_on_a_gpu_without_triton(monkeypatch):
    # no triton found
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    check = doctor.check_compile(torch.device("cuda"))
    assert check.status == "note" and check.fix == "pip install triton"
