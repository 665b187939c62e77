"""The one run configuration: recipes, the generated command line and its seed aliases,
the device, the package's shape (no import cycles, no hidden imports), atomic writes and
the linter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lmtut
import lmtut.train as train_cli
from lmtut import (
    DeviceError,
    RunConfig,
    TrainConfig,
    TransformerLMConfig,
    default_device,
    make_config,
)
from lmtut.config import NEMO_ALIASES, PRESETS, RETIRED_NEMO_FLAGS, setting_sections
from lmtut.runtime import atomic_open, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def test_presets_are_partial_overrides_of_one_config():
    owners = setting_sections()
    for name, overrides in PRESETS.items():
        assert set(overrides) <= set(owners), name
        config = make_config(name)
        flat = config.flat()
        assert all(flat[k] == v for k, v in overrides.items()) and config.preset == name
    demo = make_config("cpu-demo", max_steps=50, work_dir="w")
    assert (demo.train.max_steps, demo.train.lr, demo.model.d_model, demo.work_dir) == (
        50,
        2e-3,
        256,
        "w",
    )
    assert (
        demo.train.precision == "auto"
        and demo.train.clip_grad_norm == 1.0
        and demo.train.beta1 == 0.9
    )
    assert (
        make_config().model == TransformerLMConfig()
        and make_config().train == TrainConfig()
    )


def test_seed_names_and_errors():
    config = make_config(
        max_seq_length=32, iter_per_step=2, lr_warmup_proportion=0.1, amp_opt_level="O1"
    )
    assert (config.model.max_sequence_length, config.train.batches_per_step) == (32, 2)
    # Apex O1, mapped
    assert (config.train.warmup_ratio, config.train.precision) == (0.1, "amp-fp16")
    assert set(NEMO_ALIASES.values()) <= set(setting_sections())
    with pytest.raises(ValueError, match="unknown setting"):
        make_config(d_modle=64)
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("gpu-huge")
    with pytest.raises(ValueError, match="num_attn_heads"):
        make_config(d_model=100, num_attn_heads=3)
    with pytest.raises(ValueError, match="unknown optimizer_kind"):
        make_config(optimizer_kind="lamb")
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        make_config(max_steps=0)


def test_round_trip_through_json():
    config = make_config("gpu-base", seed=3)
    assert RunConfig.from_dict(config.to_dict()) == config


def test_command_line_flags_come_from_the_fields(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--d_model INT",
        "--lr FLOAT",
        "--max_steps INT|none",
        "--compile, --no-compile",
        "--max_sequence_length INT, --max_seq_length INT",
        "--precision STR, --amp_opt_level STR",
    ):
        assert flag in text, flag
    for name in setting_sections():
        assert f"--{name}" in text, name

    config, resume = train_cli.config_from_args(
        [
            "--preset",
            "cpu-demo",
            "--max_seq_length",
            "32",
            "--compile",
            "--iter_per_step",
            "2",
            "--save_step_freq",
            "7",
            "--max_steps",
            "none",
            "--no-tie_weights",
        ]
    )
    assert not resume and config.preset == "cpu-demo"
    assert (
        config.model.max_sequence_length,
        config.train.compile,
        config.train.batches_per_step,
    ) == (32, True, 2)
    assert (
        config.train.checkpoint_every,
        config.train.max_steps,
        config.model.tie_weights,
    ) == (7, None, False)
    config, _ = train_cli.config_from_args(
        ["--softmax", "adaptive", "--no-tie_weights", "--adaptive_cutoffs", "10,99"]
    )
    assert (
        config.model.adaptive_cutoffs == (10, 99)
        and RunConfig.from_dict(config.to_dict()) == config
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compile", "true"], "unrecognized arguments: true"),
        (["--d_model", "big"], "'big' is not int"),
        (["--adaptive_cutoffs", "10,x"], "'10,x' is not int,..."),
        (["--dropout", "1.5"], "dropout must lie in [0, 1), got 1.5"),
        (["--interactive"], RETIRED_NEMO_FLAGS["interactive"]),
        (["--beam_size", "4"], "no beam search"),
    ],
)
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        train_cli.config_from_args(argv)
    assert message in capsys.readouterr().err


def test_default_device_honours_lmtut_device(monkeypatch):
    monkeypatch.setenv("LMTUT_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv("LMTUT_DEVICE", "tpu")
    with pytest.raises(DeviceError, match="is not a device"):
        default_device()
    monkeypatch.delenv("LMTUT_DEVICE")
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("LMTUT_DEVICE", "cuda")
        with pytest.raises(DeviceError, match="sees no CUDA GPU"):
            default_device()


def test_atomic_open_writes_all_or_nothing(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_open(path, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")

    def refuse(part: Path) -> None:
        assert part.read_text() == "new\n"
        raise ValueError("bad checksum")

    with pytest.raises(ValueError, match="bad checksum"):
        with atomic_open(path, "w", check=refuse) as f:
            f.write("new\n")
    assert path.read_text() == "old\n" and sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["a.txt"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(path, "a"):
            pass


def module_imports() -> dict[str, tuple[set[str], list[str]]]:
    """Each lmtut module -> (the lmtut modules it imports at the top, imports found
    inside functions)."""
    out = {}
    for path in sorted((ROOT / "lmtut").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {
            node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("lmtut")
        }
        nested = [
            f"{path.name}:{node.lineno}"
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
            if isinstance(node, (ast.Import, ast.ImportFrom))
        ]
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = (top, nested)
    return out


def test_the_package_has_no_import_cycles_and_no_hidden_imports():
    graph = module_imports()
    assert [n for _, (_, nested) in graph.items() for n in nested] == []
    deps = {
        m: {d for d in top if d != "lmtut"}
        for m, (top, _) in graph.items()
        if m != "lmtut"
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join(path + (module,))
        if module not in done:
            for dep in deps[module]:
                visit(dep, path + (module,))
            done.add(module)

    for module in deps:
        visit(module, ())
    clis = {
        "lmtut.train",
        "lmtut.evaluate",
        "lmtut.generate",
        "lmtut.data",
        "lmtut.doctor",
    }
    # `python -m lmtut.X` runs a module the package has not imported
    assert not clis & graph["lmtut"][0]
    # nothing imports a command line
    assert not any(clis & top for m, (top, _) in graph.items())
    assert all(hasattr(lmtut, name) for name in lmtut.__all__)


def test_entry_points_are_declared():
    text = (ROOT / "pyproject.toml").read_text()
    for name in ("train", "evaluate", "generate", "data", "doctor"):
        assert f'lmtut-{name} = "lmtut.{name}:main"' in text


def test_ruff_finds_nothing():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "lmtut",
            "tests",
            "benchmarks",
            "scripts",
            "conftest.py",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
