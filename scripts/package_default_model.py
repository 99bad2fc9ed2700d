"""Package a trained model as the bundled default model (maintainers' script).

Usage: python scripts/package_default_model.py RUN/model.safetensors [VALIDATION.json ...]
           [--steps N] [--sampler heun|euler] [--sigma-max S] [--churn C]

Run it twice: once without reports to get a model file to evaluate, then with the
`refdiff evaluate --json` reports of that file (the weights stay the same; the card changes).

Reads the EMA weights and card that `refdiff train` exported, sets the card's default
sampler (the settings chosen by PSNR on training images), records the training data with its
licences and the validation scores (`refdiff evaluate --json` output), and writes
refdiff_cli/weights/refdiff-small-x8.safetensors. It prints the new sha256: paste it into
DEFAULT_MODEL_SHA256 in refdiff_cli/model/checkpoint.py, which pins it on every load.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
from pathlib import Path
from typing import Any

from refdiff_cli.config import SamplerConfig, to_dict
from refdiff_cli.model.checkpoint import DEFAULT_MODEL_PATH, load_model, save_model

#: Where the training images came from and under which terms (../shared/data/README.md).
DATA_LICENCES = {
    "levir": "LEVIR-CD (Chen and Shi 2020), Google Earth 0.5 m: academic research use only",
    "dsifn": "DSIFN-CD (Zhang et al. 2020), Google Earth ~2 m: scientific research",
    "egy": "EGY-BCD (Holail et al. 2023), 0.25 m: no licence file; research",
    "sztaki": "SZTAKI AirChange (Benedek and Sziranyi 2008/2009), aerial 1.5 m: free for "
    "scientific use",
    "paddlers": "PaddleRS test data: Apache-2.0",
    "oscd": "OSCD (Daudt et al. 2018), Sentinel-2 10 m RGB: modified Copernicus Sentinel-2 "
    "data (open licence); change labels CC BY-NC-SA",
}


def summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    """PSNR / SSIM means per method and region from an evaluate report."""
    result: dict[str, Any] = {"n_images": evaluation["n_images"], "scale": evaluation["scale"]}
    for method, regions in evaluation["methods"].items():
        result[method] = {
            region: {k: values.get(k) for k in ("psnr", "ssim", "psnr_y", "ssim_y", "n_images")}
            for region, values in regions.items()
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument(
        "validation", type=Path, nargs="*", help="evaluate --json reports (none: a first pass)"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--sigma-max", type=float, default=80.0)
    parser.add_argument("--churn", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    args = parser.parse_args()

    loaded = load_model(args.model)
    card = loaded.card
    sampler = SamplerConfig(
        sampler=args.sampler, steps=args.steps, sigma_max=args.sigma_max, S_churn=args.churn
    )
    sources = card.training.get("sources", [])
    # Images per (dataset folder, split); source names are "<folder>/<image>".
    images = collections.Counter(
        (str(s.get("name", "")).split("/")[0], s.get("split")) for s in sources
    )
    training = {
        **card.training,
        # config.steps is the run's target; a run stopped early trained fewer steps.
        "steps_trained": card.training["images_seen"] // card.training["config"]["batch_size"],
        "data": {
            folder: {
                "licence": DATA_LICENCES.get(folder, "see the dataset"),
                "train_images": images[folder, "train"],
                "val_images": images[folder, "val"],
            }
            for folder in sorted({folder for folder, _ in images})
        },
        "validation_reports": [summary(json.loads(p.read_text())) for p in args.validation],
        "sampler_choice": "best PSNR on 16 training chips (scripts/choose_sampler.py); "
        "validation images scored only afterwards",
    }
    card = dataclasses.replace(
        card, name="refdiff-small-x8", sampler=to_dict(sampler), training=training
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    digest = save_model(args.out, loaded.denoiser.net, card)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB), sha256 {digest}")


if __name__ == "__main__":
    main()
