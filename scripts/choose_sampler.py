"""Score sampler settings of a trained model by PSNR on chips (maintainers' script).

Usage: python scripts/choose_sampler.py RUN/model.safetensors CHIPS_DIR [--split train] [--n 16]

Picks the default sampler of the bundled model on *training* chips (the validation images are
kept for the final report). Each chip's LR is its HR downscaled by antialiased bicubic (the
evaluate protocol); chips are spread evenly over the split so that every source contributes.
Prints one row per setting: mean PSNR (dB, on the model's [-1, 1] range, i.e. peak-to-peak 2)
of the full chip, and the bicubic baseline.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import torch

from refdiff_cli.config import SamplerConfig
from refdiff_cli.data.dataset import ChipDataset
from refdiff_cli.data.degrade import make_lr, upsample
from refdiff_cli.diffusion.noise import PixelNoise, make_noise_fn
from refdiff_cli.diffusion.sampler import initial_state, sample
from refdiff_cli.metrics import psnr
from refdiff_cli.model.checkpoint import load_model
from refdiff_cli.model.precond import image_from_target, make_conditioning
from refdiff_cli.train_eval import LR_UPSAMPLE, center_crops

#: (sampler, steps, sigma_max): a one-step regression-like output up to a many-step sampler.
CANDIDATES = (
    ("euler", 1, 80.0),
    ("euler", 1, 20.0),
    ("euler", 1, 5.0),
    ("heun", 4, 80.0),
    ("heun", 8, 80.0),
)


def clamped_psnr(x: torch.Tensor, hr: torch.Tensor) -> float:
    """PSNR (dB) of one (1, C, H, W) image in [-1, 1] (peak-to-peak 2), clamped as upscale does."""
    return psnr(x[0].clamp(-1, 1).numpy(), hr[0].numpy(), data_range=2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("chips", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--n", type=int, default=16, help="chips, spread over the split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    loaded = load_model(args.model)
    card = loaded.card
    dataset = ChipDataset(args.chips, args.split)
    picks = np.linspace(0, len(dataset) - 1, min(args.n, len(dataset))).round().astype(int)
    scale = card.scale
    scores: dict[str, list[float]] = {"bicubic": []}
    for index in picks:
        crop = center_crops(dataset, [int(index)], crop_px=dataset.chip_px, scale=scale)
        hr = crop.hr  # (1, C, H, W) in [-1, 1]
        lr = make_lr(hr.double(), scale, "bicubic").float()
        lr_up = upsample(lr, scale, mode=LR_UPSAMPLE)
        cond = make_conditioning(
            lr_up=lr_up, ref=crop.ref, mask=crop.mask, ref_valid=crop.ref_valid
        )
        denoise = functools.partial(loaded.denoiser, cond=cond)
        scores["bicubic"].append(clamped_psnr(lr_up, hr))
        for name, steps, sigma_max in CANDIDATES:
            config = SamplerConfig(sampler=name, steps=steps, sigma_max=sigma_max)
            noise = make_noise_fn(
                PixelNoise(args.seed, hr.shape[1]),
                [(int(index) * 1000, 0)],
                (hr.shape[2], hr.shape[3]),
                None,
            )
            x_T = initial_state("noise", sigma_max, noise(0), lr_up)
            with torch.no_grad():
                x0 = sample(config, denoise, x_T, noise=noise)
            label = f"{name} {steps} step(s), sigma_max {sigma_max:g}"
            sr = image_from_target(x0, lr_up, card.target)
            scores.setdefault(label, []).append(clamped_psnr(sr, hr))
    print(f"{len(picks)} {args.split} chips of {args.chips}, x{scale}, seed {args.seed}")
    print(f"{'setting':40s} {'PSNR dB':>8s}")
    for label, values in scores.items():
        print(f"{label:40s} {np.mean(values):8.2f}")


if __name__ == "__main__":
    main()
