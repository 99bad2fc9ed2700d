"""Package a trained model as the bundled default model (maintainers' script).

Usage:
    python scripts/package_default_model.py RUN/model.safetensors [--fidelity FIDELITY.json]

Run it twice: once without ``--fidelity`` to get a packaged file, then score that file with
``python benchmarks/fidelity.py --model refdiff_cli/weights/refdiff-small-x8.safetensors
--json fidelity.json`` and run this again with ``--fidelity fidelity.json`` (the weights stay
the same; the card gains the scores). With ``--fidelity`` it also rewrites the scoreboard in
docs/default-model.md between its ``fidelity:begin`` and ``fidelity:end`` markers.

Reads the EMA weights and card that ``refdiff train`` exported (the card already holds the
reference mode, the guided transfer's constants and the one-step sampler), records the
training data with its licences, the held-out images (docs/default-model-split.toml), the
scores and, for a fine-tuned run (``init_from``), the stages it went through (the model it
started from must still be at its ``init_from`` path, or be given with ``--stage1``), and
writes refdiff_cli/weights/refdiff-small-x8.safetensors. It prints the new
sha256: paste it into DEFAULT_MODEL_SHA256 in refdiff_cli/model/checkpoint.py, which pins it
on every load.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from refdiff_cli.model.checkpoint import DEFAULT_MODEL_PATH, load_model, save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fidelity import fidelity_table  # benchmarks/ is not a package

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "docs" / "default-model-split.toml"
DOC = REPO / "docs" / "default-model.md"
NAME = "refdiff-small-x8"

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


def dataset_of(source_name: str) -> str:
    """The dataset of a chips source: "levir/x" -> levir, "single/egy_x" -> egy, oscd_* -> oscd."""
    folder, _, image = source_name.partition("/")
    if folder == "single":
        return image.split("_", 1)[0]
    return "oscd" if folder.startswith("oscd") else folder


def rewrite_doc(table: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    block = f"<!-- fidelity:begin -->\n{table}\n<!-- fidelity:end -->"
    new, count = re.subn(
        r"<!-- fidelity:begin -->.*?<!-- fidelity:end -->", block, text, flags=re.S
    )
    if count != 1:
        raise SystemExit(f"{DOC} needs one fidelity:begin/fidelity:end block")
    DOC.write_text(new, encoding="utf-8")


def stages(training: dict[str, Any], stage1: Path | None) -> list[dict[str, Any]]:
    """The training stages of a run: the model it was initialised from (if any), then itself."""
    this = {
        "steps": training["images_seen"] // training["config"]["batch_size"],
        "config": training["config"],
    }
    init_from = training["config"].get("init_from")
    if init_from is None:
        return [this]
    start = load_model(stage1 or Path(init_from), expected_sha256=training["init_from_sha256"])
    before = start.card.training
    first = {
        "sha256": start.sha256,
        "steps": before["images_seen"] // before["config"]["batch_size"],
        "config": before["config"],
    }
    return [first, this]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--fidelity", type=Path, default=None, help="benchmarks/fidelity.py --json")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--stage1", type=Path, default=None, help="the init_from model")
    args = parser.parse_args()

    loaded = load_model(args.model)
    card = loaded.card
    sources = card.training.get("sources", [])
    images = collections.Counter(dataset_of(str(s.get("name", ""))) for s in sources)
    held_out = tomllib.loads(SPLIT.read_text(encoding="utf-8"))["validation"]
    results = json.loads(args.fidelity.read_text(encoding="utf-8")) if args.fidelity else []
    training = {
        **card.training,
        # config.steps is the run's target; a run stopped early trained fewer steps.
        "steps_trained": card.training["images_seen"] // card.training["config"]["batch_size"],
        "data": {
            dataset: {
                "licence": DATA_LICENCES.get(dataset, "see the dataset"),
                "train_sources": images[dataset],
            }
            for dataset in sorted(images)
        },
        "held_out": held_out,
        "stages": stages(card.training, args.stage1),
        "fidelity": results,
        "sampler_choice": "one deterministic Euler step from 0 at sigma_max: the network's "
        "estimate of the conditional mean (trained on mean items); no seed noise",
    }
    card = dataclasses.replace(card, name=NAME, training=training)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    digest = save_model(args.out, loaded.denoiser.net, card)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB), sha256 {digest}")
    if results:
        rewrite_doc(fidelity_table(results))
        print(f"rewrote the scoreboard in {DOC}")


if __name__ == "__main__":
    main()
