"""Choose the guided transfer's trust thresholds on TRAINING chips (never validation data).

Usage: python scripts/tune_guided.py CHIPS_DIR [--chips N]

For every training chip (256 px, x8, bicubic LR) two references are scored: the chip's own
(cross-date pairs: mostly untrustworthy) and one synthesised from its HR with the training
nuisances (``train/references.py``: colour shift, pasted/removed objects, 0-2 px shift,
noise). Prints, for each (trust_low, trust_high), the mean PSNR gain over bicubic in the
unchanged region of each kind. The default of ``GuidedConfig`` maximises the synthesised gain
subject to no loss on the real cross-date pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import torch

from refdiff_cli.data.resample import downscale_bicubic, upsample
from refdiff_cli.datasets.chips import ChipDataset
from refdiff_cli.metrics.pixel import psnr
from refdiff_cli.reference.guided import GuidedConfig, guided_transfer
from refdiff_cli.train.references import synthesised_reference

SCALE = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chips", type=Path)
    parser.add_argument("--chips", dest="limit", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = ChipDataset(args.chips, "train")
    picks = np.random.default_rng(0).choice(len(data), min(args.limit, len(data)), replace=False)
    cases = []
    for i in picks:
        chip = data.chip(int(i))
        hr = torch.from_numpy(chip.hr.astype(np.float32))
        valid = torch.from_numpy(chip.hr_valid.copy())
        real = (
            torch.from_numpy(chip.ref.astype(np.float32)),
            torch.from_numpy(chip.mask.astype(np.float32)),
        )
        rng = np.random.default_rng(int(i))
        synth = synthesised_reference(hr, valid, rng)[:2]
        cases.append((hr[None], real, synth))
    grid = [
        (lo, hi)
        for lo, hi in itertools.product((0.0, 0.2, 0.5, 0.7), (0.5, 0.7, 0.8, 0.9))
        if lo < hi
    ]
    print("| trust_low | trust_high | real refs dB vs bicubic | synthesised refs dB vs bicubic |")
    print("|---|---|---|---|")
    for lo, hi in grid:
        config = dataclasses.replace(GuidedConfig(), trust_low=lo, trust_high=hi)
        gains: dict[str, list[float]] = {"real": [], "synth": []}
        for hr, *refs in cases:
            lr = downscale_bicubic(hr, SCALE)
            bic = upsample(lr, SCALE, clamp=False)
            for kind, (ref, mask) in zip(("real", "synth"), refs, strict=True):
                if kind == "real" and torch.equal(ref, hr[0]):
                    continue  # a single-date image: its stored reference is the HR itself
                out = guided_transfer(
                    lr,
                    ref[None],
                    mask=mask[None],
                    ref_valid=torch.ones_like(mask[None], dtype=torch.bool),
                    scale=SCALE,
                    config=config,
                ).estimate
                region = mask[0].numpy() < 0.5
                if region.sum() < 100:
                    continue
                g = psnr(out[0].numpy(), hr[0].numpy(), data_range=2.0, region=region)
                b = psnr(bic[0].numpy(), hr[0].numpy(), data_range=2.0, region=region)
                gains[kind].append(g - b)
        print(
            f"| {lo} | {hi} | {np.mean(gains['real']):+.2f} | {np.mean(gains['synth']):+.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
