"""Issue 9, item 10: `--precision bf16` on a CPU without bf16 instructions warns."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from refdiff_cli import cli


@pytest.fixture(autouse=True)
def _restore_logging_and_signals() -> Iterator[None]:
    package_logger = logging.getLogger("refdiff_cli")
    saved = (package_logger.handlers[:], package_logger.propagate, package_logger.level)
    previous = signal.getsignal(signal.SIGTERM)
    yield
    package_logger.handlers[:], package_logger.propagate, package_logger.level = saved
    signal.signal(signal.SIGTERM, previous)


def fake_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
    monkeypatch.setattr(cli, "CPUINFO", cpuinfo)


def run_bf16(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    missing = str(tmp_path / "missing.tif")  # the warning comes before the inputs are read
    args = ["upscale", missing, "--ref", missing, "--mask", missing, "-o", str(tmp_path / "o")]
    assert cli.run([*args, "--precision", "bf16", "--engine", "bicubic", *extra]) == 3
    return capsys.readouterr().err


def test_bf16_on_a_cpu_without_bf16_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_cpu(monkeypatch, tmp_path, "avx512f")
    err = run_bf16(tmp_path, capsys, "--device", "cpu")
    assert "--precision bf16 on a CPU without bf16 instructions" in err
    assert "use --precision fp32" in err


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_bf16_on_a_cpu_with_bf16_is_quiet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    fake_cpu(monkeypatch, tmp_path, flag)
    assert "bf16 instructions" not in run_bf16(tmp_path, capsys, "--device", "cpu")


def test_unknown_cpu_is_quiet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "CPUINFO", tmp_path / "no-such-file")
    assert "bf16 instructions" not in run_bf16(tmp_path, capsys, "--device", "cpu")
