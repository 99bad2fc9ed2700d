"""Which torch device and precision a run computes on, refusing the ones that would not work.

``resolve_device`` maps ``--device``; ``check_precision`` refuses half precision the CPU would
emulate. Used by upscale, evaluate and train alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refdiff_cli.config import Precision
from refdiff_cli.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N|mps`` to an available torch device (ConfigError otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: CUDA is not available on this machine", hint="use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"--device {name}: MPS is not available on this machine", hint="use --device cpu"
        )
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


#: Where Linux lists the CPU's instruction sets (when torch cannot say).
CPUINFO = Path("/proc/cpuinfo")
#: CPU features of native bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm BF16.
BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_bf16() -> bool | None:
    """Whether the CPU computes in bf16 natively; None when it cannot be told.

    From ``torch.cpu.get_capabilities()`` (recent PyTorch), else Linux's ``/proc/cpuinfo``.
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        known = capabilities()
        if len(known) > 1:  # more than "architecture": an instruction set torch knows
            return any(known.get(name) is True for name in BF16_FEATURES)
    try:
        flags = set(CPUINFO.read_text(errors="replace").split())
    except OSError:
        return None
    return bool(flags & BF16_FEATURES)


def check_precision(device: torch.device, precision: Precision) -> None:
    """Refuse half precision the CPU would emulate (ConfigError, exit 2).

    fp16 autocast on the CPU is slow and overflows; bf16 without bf16 instructions ran the
    bundled model 3x slower than fp32 (and less precisely), while with AMX it is 1.9x faster.
    """
    if device.type != "cpu":
        return
    if precision == "fp16":
        raise ConfigError("--precision fp16 needs a GPU; use fp32 or bf16 on the CPU")
    if precision == "bf16" and cpu_has_bf16() is False:
        raise ConfigError(
            "--precision bf16 on a CPU without bf16 instructions (avx512_bf16, amx_bf16 or "
            "Arm bf16): PyTorch would emulate it, about 3x slower than fp32 and less precise",
            hint="use --precision fp32 on this machine",
        )
