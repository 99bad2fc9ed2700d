"""Fit the uncertainty gains of ``reference/trust.py`` on TRAINING chips (never validation data).

Usage: python scripts/calibrate_trust.py CHIPS_DIR [--chips N] [--model PATH]

For training chips (256 px, x8, bicubic LR of the HR), each with its own reference and with
one synthesised from its HR (``train/references.py``), runs the model (default: the bundled
one) as ``upscale`` does and fits ``|error| ~ k_0 + tau (k_lr (1 - w) + k_ref w)`` by least
squares over every pixel (model units; the error is the band mean of |SR - HR|). Prints the
gains to paste into ``UNCERTAINTY_GAINS`` and the error by decile of the fitted uncertainty.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.data.resample import downscale_bicubic
from refdiff_cli.datasets.chips import ChipDataset
from refdiff_cli.reference.trust import UncertaintyGains, lr_texture
from refdiff_cli.train.references import synthesised_reference
from refdiff_cli.upscale.engine_choice import load_engine
from refdiff_cli.upscale.engines import EngineBatch

SCALE = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chips", type=Path)
    parser.add_argument("--chips", dest="limit", type=int, default=60)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = load_engine(UpscaleOptions(engine="diffusion", model=args.model, device="cpu"))
    data = ChipDataset(args.chips, "train")
    picks = np.random.default_rng(1).choice(len(data), min(args.limit, len(data)), replace=False)
    columns: list[np.ndarray] = []
    for i in picks:
        chip = data.chip(int(i))
        hr = torch.from_numpy(chip.hr.astype(np.float32))[None]
        valid = torch.from_numpy(chip.hr_valid.copy())
        own = (
            torch.from_numpy(chip.ref.astype(np.float32))[None],
            torch.from_numpy(chip.mask.astype(np.float32))[None],
            torch.from_numpy(chip.ref_valid.copy())[None],
        )
        synth = tuple(
            t[None] for t in synthesised_reference(hr[0], valid, np.random.default_rng(int(i)))
        )
        for ref, mask, ref_valid in (own, synth):
            lr = downscale_bicubic(hr, SCALE).clamp(-1, 1)
            batch = EngineBatch(
                lr=lr, ref=ref, ref_valid=ref_valid, mask=mask[:, :1], origins=((0, 0),), seed=0
            )
            error = (engine(batch) - hr).abs().mean(dim=1, keepdim=True)
            w = engine.reference_weight(batch).clamp(0, 1)
            tau = lr_texture(lr, SCALE)
            keep = valid[None].expand_as(error)
            columns.append(np.stack([t[keep].numpy() for t in (error, tau * (1 - w), tau * w)]))
    error, lr_term, ref_term = np.concatenate(columns, axis=1)
    design = np.stack([np.ones_like(error), lr_term, ref_term], axis=1)
    (k_0, k_lr, k_ref), *_ = np.linalg.lstsq(design, error, rcond=None)
    gains = UncertaintyGains(k_0=float(k_0), k_lr=float(k_lr), k_ref=float(k_ref))
    print(f"{gains}  ({error.size} pixels of {len(picks)} chips x 2 references)")
    predicted = design @ np.array([k_0, k_lr, k_ref])
    edges = np.quantile(predicted, np.linspace(0, 1, 11))
    print("| uncertainty decile | mean uncertainty | mean |error| |")
    print("|---|---|---|")
    for d in range(10):
        inside = (predicted >= edges[d]) & (predicted <= edges[d + 1])
        print(f"| {d + 1} | {predicted[inside].mean():.4f} | {error[inside].mean():.4f} |")


if __name__ == "__main__":
    main()
