"""Is the trust layer's uncertainty calibrated? Mean absolute error by uncertainty decile.

Usage:
    python benchmarks/trust.py [--data ../shared/data] [--model PATH] [--engine diffusion]
        [--sets synthetic,oscd,cd] [--work DIR] [--json OUT.json]

On the held-out sets of ``benchmarks/fidelity.py`` (no model trained on them), runs the
engine through the tiled pipeline ``upscale`` uses, with the ``--trust-out`` layers
(``refdiff_cli/reference/trust.py``), and pools every valid pixel of each set: pixels are binned by
deciles of band 2 (the uncertainty, output units) and the table gives, per bin, the mean
uncertainty, the mean absolute error (band mean of |SR - HR|, output units) and the mean
reference weight. A calibrated layer has an error that rises from bin to bin.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.evaluate.inputs import load_sample, open_dataset, resolve_layout
from refdiff_cli.evaluate.methods import BLOCK_ROWS, array_space, sample_reader
from refdiff_cli.upscale.engine_choice import load_engine
from refdiff_cli.upscale.pipeline import sr_strips, tile_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import SCALE, build_cases, held_out_parser, shared_data

BINS = 10


def main() -> None:
    parser = held_out_parser(__doc__.splitlines()[0], sets="synthetic,oscd,cd")
    parser.add_argument("--engine", default="diffusion", choices=("diffusion", "guided"))
    args = parser.parse_args()
    data = shared_data(args, required=True)
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    options = UpscaleOptions(engine=args.engine, model=args.model, scale=SCALE, device="cpu")
    engine = load_engine(options)
    pooled: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
        for set_name, _, path in build_cases(set(args.sets.split(",")) - {"sample"}, data, work):
            dataset = open_dataset(path, resolve_layout(path, "auto"), scale=SCALE)
            for index in range(len(dataset.items)):
                sample = load_sample(dataset, index)
                pooled.setdefault(set_name, []).append(pixel_table(sample, engine, options))
    results = {name: decile_table(np.concatenate(parts, axis=1)) for name, parts in pooled.items()}
    for name, rows in results.items():
        print(f"\n{name}: {args.engine}, pixels binned by uncertainty decile (output units)\n")
        print("| decile | mean uncertainty | mean absolute error | mean reference weight |")
        print("|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['decile']} | {row['uncertainty']:.2f} | {row['error']:.2f} | "
                f"{row['weight']:.2f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def pixel_table(sample: Any, engine: Any, options: UpscaleOptions) -> np.ndarray:
    """(3, N) uncertainty, absolute error and reference weight of every valid pixel."""
    shape = (sample.hr.shape[1], sample.hr.shape[2])
    plan = tile_plan(shape, engine, options)
    bands = sample.lr.shape[0]
    layers = np.zeros((bands + 2, *shape), dtype=np.float64)
    valid = np.zeros(shape, dtype=bool)
    strips = sr_strips(
        sample_reader(sample),
        engine,
        plan,
        array_space(sample, engine),
        seed=0,
        batch_size=4,
        block_rows=BLOCK_ROWS,
        layers=("weight", "uncertainty"),
    )
    for strip in strips:
        rows = slice(strip.row_off, strip.row_off + strip.values.shape[1])
        layers[:, rows], valid[rows] = strip.values, strip.valid
    sr = np.clip(np.rint(layers[:bands]), *dtype_range(sample.hr.dtype))
    error = np.abs(sr - sample.hr.astype(np.float64)).mean(axis=0)
    keep = valid & sample.hr_valid
    return np.stack([layers[bands + 1][keep], error[keep], layers[bands][keep]])


def dtype_range(dtype: np.dtype[Any]) -> tuple[float, float]:
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return float(info.min), float(info.max)


def decile_table(pixels: np.ndarray) -> list[dict[str, float]]:
    """Mean uncertainty, error and weight per decile of the uncertainty."""
    uncertainty, error, weight = pixels
    order = np.argsort(uncertainty, kind="stable")
    rows = []
    for decile, part in enumerate(np.array_split(order, BINS), start=1):
        rows.append(
            {
                "decile": decile,
                "uncertainty": float(uncertainty[part].mean()),
                "error": float(error[part].mean()),
                "weight": float(weight[part].mean()),
            }
        )
    return rows


if __name__ == "__main__":
    main()
