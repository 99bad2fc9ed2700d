"""Issue 11, item 3: `--precision bf16` on a CPU without bf16 instructions is refused (exit 2);
issue 9, item 10 had warned about it only in the CLI, and the API ran it 3x slower."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from refdiff_cli import cli
from refdiff_cli.errors import ConfigError
from refdiff_cli.model import device
from refdiff_cli.model.checkpoint import default_model_installed

needs_default_model = pytest.mark.skipif(
    not default_model_installed(), reason="no bundled model in this checkout"
)


@pytest.fixture(autouse=True)
def _restore_logging_and_signals() -> Iterator[None]:
    package_logger = logging.getLogger("refdiff_cli")
    saved = (package_logger.handlers[:], package_logger.propagate, package_logger.level)
    previous = signal.getsignal(signal.SIGTERM)
    yield
    package_logger.handlers[:], package_logger.propagate, package_logger.level = saved
    signal.signal(signal.SIGTERM, previous)


def run_bf16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    missing = str(tmp_path / "missing.tif")  # the engine is built before the inputs are read
    args = ["upscale", missing, "--ref", missing, "--mask", missing, "-o", str(tmp_path / "o")]
    code = cli.run([*args, "--precision", "bf16", "--engine", "diffusion", "--device", "cpu"])
    return code, capsys.readouterr().err


@needs_default_model
def test_bf16_on_a_cpu_without_bf16_exits_2_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    code, err = run_bf16(tmp_path, capsys)
    assert code == 2, err
    assert "--precision bf16 on a CPU without bf16 instructions" in err
    assert "use --precision fp32" in err


@needs_default_model
@pytest.mark.parametrize("has_bf16", [True, None])
def test_bf16_on_a_cpu_with_bf16_or_an_unknown_cpu_runs(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    has_bf16: bool | None,
) -> None:
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: has_bf16)
    code, err = run_bf16(tmp_path, capsys)
    assert code == 3 and "missing.tif" in err  # past the engine, stopped by the inputs


def test_the_bicubic_and_gpu_engines_are_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    device.check_precision(torch.device("cpu"), "fp32")
    device.check_precision(torch.device("cuda"), "bf16")  # a device type, not opened
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        device.check_precision(torch.device("cpu"), "fp16")


@pytest.mark.parametrize(
    ("flags", "expected"), [("avx512f", False), ("avx512_bf16", True), ("amx_bf16", True)]
)
def test_cpuinfo_flags_tell_bf16_when_torch_cannot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str, expected: bool
) -> None:
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
    monkeypatch.setattr(device, "CPUINFO", cpuinfo)
    assert device.cpu_has_bf16() is expected
    monkeypatch.setattr(device, "CPUINFO", tmp_path / "no-such-file")
    assert device.cpu_has_bf16() is None


def test_torch_capabilities_tell_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    caps = {"architecture": "x86_64", "avx2": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    assert device.cpu_has_bf16() is False
    caps["amx_bf16"] = True
    assert device.cpu_has_bf16() is True
