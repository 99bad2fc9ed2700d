"""The fidelity scoreboard: bicubic, hpf, guided and the model on data no model trained on.

Usage:
    python benchmarks/fidelity.py [--data ../shared/data] [--model PATH]
        [--methods bicubic,hpf,guided,model] [--sets sample,synthetic,oscd,cd]
        [--work DIR] [--json OUT.json]

Prints one Markdown table of PSNR (dB) per method, each cell "all / changed / unchanged"
(changed is "-" where a case has no changed pixel). Every method runs through
``refdiff_cli.evaluate.run`` (the tiled pipeline users get, cast to the data type), at x8:

- **sample**: the bundled sample scene (its real LR, 4 m) with references made from its
  true HR and an all-zero mask: perfect, radiometrically altered (per-band gain, gamma,
  offset), shifted 1.5 px, and garbage (flat grey, shifted 37 px, another place: the HR
  turned upside down); plus the scene's own older reference and change mask;
- **synthetic**: trustworthy-reference triplets synthesised (``train_references``: colour
  shift, pasted and removed objects marked in the mask, 0-2 px misregistration, noise) from
  the validation images of ``docs/default-model-split.toml``: the change-detection pairs'
  later images and ``geotiff/cogeo.tif``;
- **oscd**: the OSCD validation cities (Sentinel-2 RGB, real two-date pairs and labels);
- **cd**: the validation pairs of LEVIR, DSIFN and EGY (cross-date Google Earth), per source.

LR images are the HR downscaled by antialiased bicubic, except the sample scene's own LR
(8 x 8 block means). The shared data come from ``--data`` or ``REFDIFF_SHARED_DATA``; sets
that need it are skipped without it. ``--work`` keeps the built sets (default: a temporary
folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine

from refdiff_cli.data.normalize import cast_to_dtype
from refdiff_cli.data.resample import downscale_bicubic
from refdiff_cli.evaluate.options import EvalOptions
from refdiff_cli.evaluate.run import evaluate
from refdiff_cli.reference.guided import shift_image
from refdiff_cli.train.references import synthesised_reference

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SPLIT = REPO / "docs" / "default-model-split.toml"
SCALE = 8
REGIONS = ("all", "changed", "unchanged")
CD_SOURCES = ("levir", "dsifn", "egy")

Case = tuple[str, str, Path]  # (set, case, dataset path)


def held_out_parser(description: str, *, sets: str) -> argparse.ArgumentParser:
    """The options the held-out benchmarks share: --data, --model, --sets, --work, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=os.environ.get("REFDIFF_SHARED_DATA"))
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--sets", default=sets)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def shared_data(args: argparse.Namespace, *, required: bool = False) -> Path:
    """``--data``, ``REFDIFF_SHARED_DATA`` or ../shared/data; exits without it if ``required``."""
    data: Path = args.data or (REPO.parent / "shared" / "data")
    if required and not data.is_dir():
        sys.exit(f"no shared data at {data}: pass --data or set REFDIFF_SHARED_DATA")
    return data


def main() -> None:
    parser = held_out_parser(__doc__.splitlines()[0], sets="sample,synthetic,oscd,cd")
    parser.add_argument("--methods", default="bicubic,hpf,guided,model")
    args = parser.parse_args()
    data = shared_data(args)
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    methods = tuple(args.methods.split(","))
    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
        cases = build_cases(set(args.sets.split(",")), data, work)
        results = [score(case, methods, args.model) for case in cases]
    print(f"PSNR dB at x{SCALE}, each cell all / changed / unchanged\n")
    print(fidelity_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def build_cases(sets: set[str], data: Path, work: Path) -> list[Case]:
    cases: list[Case] = []
    if "sample" in sets:
        cases += sample_cases(work / "sample")
    have_data = data.is_dir()
    if not have_data and sets - {"sample"}:
        print(f"skipping {', '.join(sorted(sets - {'sample'}))}: no shared data at {data}")
        return cases
    split = tomllib.loads(SPLIT.read_text(encoding="utf-8"))["validation"]
    if "synthetic" in sets:
        cases.append(("synthetic", "validation images", synthetic_set(data, split, work)))
    if "oscd" in sets:
        cases += oscd_cases(data, split["oscd"]["cities"], work / "oscd")
    if "cd" in sets:
        for source in CD_SOURCES:
            folder = work / "cd" / source
            names = split["cd_pairs"][source]
            for sub in ("A", "B", "label"):
                for path in sorted((data / "cd_pairs" / source / sub).iterdir()):
                    if path.stem in names:
                        link(path, folder / sub / path.name)
            cases.append(("cd", source, folder))
    return cases


# -- the sample scene --------------------------------------------------------------------


def sample_cases(folder: Path) -> list[Case]:
    """One single-row CSV per reference made from the sample HR, and the scene's own set."""
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SAMPLE / "hr.tif") as src:
        hr, profile = src.read().astype(np.float32), src.profile
    zero_mask = folder / "mask_zero.tif"
    write_like(profile, np.zeros((1, *hr.shape[1:]), np.uint8), zero_mask)
    variants: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "perfect reference": lambda x: x,
        "radiometric change": recolour,
        "shifted 1.5 px": lambda x: shifted(x, 1.5, -1.0),
        "flat grey": lambda x: np.full_like(x, 128.0),
        "shifted 37 px": lambda x: shifted(x, 37.0, 0.0),
        "another place": lambda x: x[:, ::-1, ::-1].copy(),
    }
    cases: list[Case] = []
    for name, make in variants.items():
        ref = folder / f"ref_{name.replace(' ', '_')}.tif"
        write_like(profile, np.clip(np.rint(make(hr)), 0, 255).astype(np.uint8), ref)
        cases.append(("sample", name, write_csv(folder, name, ref, zero_mask)))
    own = write_csv(folder, "own", SAMPLE / "ref.tif", SAMPLE / "cd.tif")
    cases.append(("sample", "its own reference and mask", own))
    return cases


def recolour(x: np.ndarray) -> np.ndarray:
    """Per-band gain, gamma and offset of 0..255 values (a different sensor or season)."""
    gain = np.array([1.12, 0.9, 1.05])[:, None, None]
    gamma = np.array([1.15, 0.9, 1.0])[:, None, None]
    offset = np.array([8.0, -5.0, 3.0])[:, None, None]
    return 255.0 * (x / 255.0) ** gamma * gain + offset


def shifted(x: np.ndarray, dy: float, dx: float) -> np.ndarray:
    moved = shift_image(torch.from_numpy(x)[None], torch.tensor([[dy, dx]], dtype=torch.float32))
    return moved[0].numpy()


def write_csv(folder: Path, name: str, ref: Path, mask: Path) -> Path:
    path = folder / f"{name.replace(' ', '_')}.csv"
    row = [SAMPLE / "lr.tif", ref, mask, SAMPLE / "hr.tif"]
    path.write_text("lr,ref,mask,hr\n" + ",".join(str(p) for p in row) + "\n", encoding="utf-8")
    return path


def write_like(profile: dict[str, Any], values: np.ndarray, path: Path) -> None:
    out = {**profile, "count": values.shape[0], "dtype": values.dtype.name, "nodata": None}
    with rasterio.open(path, "w", **out) as dst:
        dst.write(values)


# -- synthesised triplets, OSCD, change-detection pairs ------------------------------------


def synthetic_set(data: Path, split: dict[str, Any], work: Path) -> Path:
    """A cd-layout folder of synthesised references for every validation image (uint8 RGB)."""
    folder = work / "synthetic"
    images = [
        data / "cd_pairs" / source / "B" / path.name
        for source, names in split["cd_pairs"].items()
        for path in sorted((data / "cd_pairs" / source / "B").iterdir())
        if path.stem in names
    ] + [data / "geotiff" / name for name in split["geotiff"]["files"]]
    for image in images:
        with rasterio.open(image) as src:
            hr = src.read()[:3]
        rng = np.random.default_rng(sum(image.name.encode()))
        model = torch.from_numpy(hr.astype(np.float32) / 127.5 - 1.0)
        valid = torch.ones((1, *hr.shape[1:]), dtype=torch.bool)
        ref, mask, _ = synthesised_reference(model, valid, rng)
        ref_dn = np.clip(np.rint((ref.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
        name = f"{image.parent.parent.name}_{image.stem}.png"
        for sub, values in (("B", hr), ("A", ref_dn), ("label", mask.numpy().astype(np.uint8))):
            write_png(values, folder / sub / name)
    return folder


def write_png(values: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = values.shape
    with rasterio.open(
        path, "w", driver="PNG", width=width, height=height, count=count, dtype="uint8"
    ) as dst:
        dst.write(values)


def oscd_cases(data: Path, cities: list[str], folder: Path) -> list[Case]:
    """One CSV per validation city: RGB GeoTIFF triplets plus an antialiased-bicubic LR."""
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "oscd_to_geotiff.py"),
            str(data / "oscd"),
            str(folder),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cases: list[Case] = []
    for city in cities:
        hr, lr = folder / f"{city}_hr.tif", folder / f"{city}_lr.tif"
        write_lr(hr, lr)
        row = [lr, folder / f"{city}_ref.tif", folder / f"{city}_mask.tif", hr]
        csv = folder / f"{city}.csv"
        csv.write_text("lr,ref,mask,hr\n" + ",".join(map(str, row)) + "\n", encoding="utf-8")
        cases.append(("oscd", city, csv))
    return cases


def write_lr(hr_path: Path, lr_path: Path) -> None:
    """LR = antialiased bicubic downscale of the HR, on the HR grid scaled by ``SCALE``."""
    with rasterio.open(hr_path) as src:
        hr, profile = src.read(), src.profile
    rows, cols = hr.shape[1] // SCALE * SCALE, hr.shape[2] // SCALE * SCALE
    hr64 = torch.from_numpy(hr[:, :rows, :cols].astype(np.float64))[None]
    lr, _ = cast_to_dtype(downscale_bicubic(hr64, SCALE)[0].numpy(), hr.dtype)
    profile.update(
        width=lr.shape[2], height=lr.shape[1], transform=profile["transform"] * Affine.scale(SCALE)
    )
    with rasterio.open(lr_path, "w", **profile) as dst:
        dst.write(lr)


def link(target: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.symlink_to(target.resolve())


# -- scoring and the table -----------------------------------------------------------------


def score(case: Case, methods: tuple[str, ...], model: Path | None) -> dict[str, Any]:
    set_name, case_name, path = case
    options = EvalOptions(methods=methods, scale=SCALE, model=model, device="cpu", seed=0)
    report = evaluate(path, options).to_dict()
    cells = {
        method: {region: report["methods"][method][region].get("psnr") for region in REGIONS}
        for method in methods
    }
    return {"set": set_name, "case": case_name, "n_images": report["n_images"], "psnr": cells}


def fidelity_table(results: list[dict[str, Any]]) -> str:
    """The scoreboard as Markdown: PSNR all / changed / unchanged per method and case."""
    methods = list(results[0]["psnr"])
    lines = [
        "| set | case | images | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for row in results:
        cells = [
            " / ".join("-" if v is None else f"{v:.2f}" for v in row["psnr"][m].values())
            for m in methods
        ]
        lines.append(
            f"| {row['set']} | {row['case']} | {row['n_images']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
