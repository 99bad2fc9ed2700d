"""Runs without a change mask: how good the estimated mask is, and what it costs the output.

Usage:
    python benchmarks/change_mask.py [--data ../shared/data] [--model PATH]
        [--methods guided,model] [--sets synthetic,oscd,cd] [--work DIR] [--json OUT.json]

On the held-out sets of ``benchmarks/fidelity.py`` (the same cases; no model trained on
them), every method runs through ``refdiff_cli.evaluate.run`` three times, with
``--mask-source`` label (the dataset's change mask), estimated (``change.estimate_change``,
what ``refdiff upscale`` does without ``--mask``) and none (everything changed: the
reference is not used). Prints two Markdown tables:

1. the estimated mask against the labels (precision / recall / F1 / IoU, pooled over each
   case's valid pixels) beside change vector analysis (Otsu threshold of the magnitude of
   LR minus the registered, downscaled reference);
2. PSNR (dB, all pixels) per method and mask source.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import rasterio

from refdiff_cli.evaluate.options import EvalOptions, MaskSource
from refdiff_cli.evaluate.run import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import SCALE, Case, build_cases, held_out_parser, shared_data

MASK_SOURCES: tuple[MaskSource, ...] = ("label", "estimated", "none")


def main() -> None:
    parser = held_out_parser(__doc__.splitlines()[0], sets="synthetic,oscd,cd")
    parser.add_argument("--methods", default="guided,model")
    args = parser.parse_args()
    data = shared_data(args, required=True)
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    methods = tuple(args.methods.split(","))
    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
        cases = build_cases(set(args.sets.split(",")) - {"sample"}, data, work)
        results = [score(case, methods, args.model) for case in cases]
    print(f"Estimated change masks against the labels, x{SCALE}\n")
    print(mask_table(results))
    print(f"\nPSNR dB (all pixels) by the mask the methods get, x{SCALE}\n")
    print(psnr_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def score(case: Case, methods: tuple[str, ...], model: Path | None) -> dict[str, Any]:
    set_name, case_name, path = case
    psnr: dict[str, dict[str, float | None]] = {m: {} for m in methods}
    masks: dict[str, dict[str, float]] = {}
    for source in MASK_SOURCES:
        options = EvalOptions(
            methods=methods, scale=SCALE, model=model, device="cpu", seed=0, mask_source=source
        )
        report = evaluate(path, options).to_dict()
        for method in methods:
            psnr[method][source] = report["methods"][method]["all"].get("psnr")
        if source == "estimated":
            masks = report["mask_scores"]
    return {"set": set_name, "case": case_name, "psnr": psnr, "mask_scores": masks}


def mask_table(results: list[dict[str, Any]]) -> str:
    """Precision / recall / F1 / IoU of the estimated mask and of CVA, one row per case."""
    lines = [
        "| set | case | estimated P / R / F1 / IoU | CVA P / R / F1 / IoU |",
        "|---|---|---|---|",
    ]
    for row in results:
        cells = [
            " / ".join(
                f"{row['mask_scores'][k][s]:.3f}" for s in ("precision", "recall", "f1", "iou")
            )
            for k in ("estimated", "cva")
        ]
        lines.append(f"| {row['set']} | {row['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def psnr_table(results: list[dict[str, Any]]) -> str:
    """PSNR of each method with the label, estimated and no mask, one row per case and method."""
    lines = ["| set | case | method | label | estimated | none |", "|---|---|---|---|---|---|"]
    for row in results:
        for method, by_source in row["psnr"].items():
            cells = ["-" if by_source[s] is None else f"{by_source[s]:.2f}" for s in MASK_SOURCES]
            lines.append(f"| {row['set']} | {row['case']} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
