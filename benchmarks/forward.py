"""Benchmark one network forward pass per preset: parameters, GFLOP and milliseconds (batch 1).

Usage: python benchmarks/forward.py [--presets paper small tiny] [--sizes 128 256]
       [--repeats 5] [--device cpu|cuda] [--paper-cpu]

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on the meta device (no compute,
a multiply-add counts 2). Times are the median of ``--repeats`` runs after one warm-up, in eval
mode under no_grad; bf16 runs under torch.autocast (CPU or CUDA), with CUDA synchronised. The
paper preset is not timed on a CPU unless ``--paper-cpu`` is given (tens of seconds per run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from refdiff_cli.model.network import RefDiffUNet
from refdiff_cli.model.network_config import PRESETS, NetworkConfig

#: Tiles above this size are not timed for the tiny preset (its middle attention grows as size^4).
TINY_MAX_TIMED_PX = 128


def make_inputs(cfg: NetworkConfig, size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Batch-1 inputs (x_in, c_noise, lr_up, ref, mask) of a size x size tile."""
    g = torch.Generator().manual_seed(0)
    c, m = cfg.image_channels, cfg.mask_channels
    if device.type == "meta":
        x = torch.empty(1, c, size, size, device=device)
        return x, torch.empty(1, device=device), x, x, torch.empty(1, m, size, size, device=device)
    tensors = (
        torch.randn(1, c, size, size, generator=g),
        torch.zeros(1),
        torch.rand(1, c, size, size, generator=g) * 2 - 1,
        torch.rand(1, c, size, size, generator=g) * 2 - 1,
        (torch.rand(1, m, size, size, generator=g) > 0.5).float(),
    )
    return tuple(t.to(device) for t in tensors)


def count_flops(net: RefDiffUNet, size: int) -> tuple[float, float]:
    """Return (total GFLOP, share of it in the SFT convs) of one forward pass."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(*make_inputs(net.config, size, torch.device("meta")))
    total = counter.get_total_flops()
    sft = sum(
        sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if name.endswith(("sft_sem", "sft_tex"))
    )
    return total / 1e9, sft / total


def time_forward(
    net: RefDiffUNet, size: int, device: torch.device, dtype: torch.dtype, repeats: int
) -> float:
    """Median milliseconds of one forward pass."""
    args = make_inputs(net.config, size, device)

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            net(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3

    with torch.no_grad():
        run()
        return statistics.median(run() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--paper-cpu", action="store_true", help="also time the paper on CPU")
    opts = parser.parse_args()
    device = torch.device(opts.device)

    header = ["preset", "params", "size", "GFLOP", "SFT %", "fp32 ms", "bf16 ms"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for name in opts.presets:
        cfg = PRESETS[name]
        with torch.device("meta"):
            meta_net = RefDiffUNet(cfg)
        params = sum(p.numel() for p in meta_net.parameters())
        timed = opts.paper_cpu or name != "paper" or device.type != "cpu"
        net = RefDiffUNet(cfg).eval().to(device) if timed else None
        for size in opts.sizes:
            gflop, sft_share = count_flops(meta_net, size)
            times = ["-", "-"]
            if net is not None and not (name == "tiny" and size > TINY_MAX_TIMED_PX):
                times = [
                    f"{time_forward(net, size, device, dtype, opts.repeats):.0f}"
                    for dtype in (torch.float32, torch.bfloat16)
                ]
            rows.append(
                [name, f"{params:,}", str(size), f"{gflop:.1f}", f"{100 * sft_share:.1f}", *times]
            )
        if net is None:
            notes.append("paper not timed on CPU (pass --paper-cpu)")
    if "tiny" in opts.presets and max(opts.sizes) > TINY_MAX_TIMED_PX:
        notes.append(f"tiny not timed above {TINY_MAX_TIMED_PX} px (attention over H/2 x W/2 px)")

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    threads = torch.get_num_threads()
    print(f"device: {device} ({threads} threads), torch {torch.__version__}, batch 1")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
