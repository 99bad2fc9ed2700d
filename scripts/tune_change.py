"""Choose the change estimator's thresholds on TRAINING chips (never validation data).

Usage: python scripts/tune_change.py CHIPS_DIR [--chips N]

For training chips (256 px, x8, bicubic LR of the HR) with a real cross-date reference and a
labelled change, and for references synthesised from the HR with the training nuisances
(``train_references.py``: colour shift, pasted/removed objects marked in the mask, 0-2 px
shift, noise), prints the pooled F1 of ``estimate_change`` against the labels for each
(structure_threshold, radiometric_threshold), beside change vector analysis. The default of
``ChangeConfig`` maximises the mean of the two F1s.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from refdiff_cli.change import (
    ChangeConfig,
    ChangeEvidence,
    change_evidence,
    change_vector_analysis,
    decide,
)
from refdiff_cli.data.dataset import ChipDataset
from refdiff_cli.data.degrade import downscale_bicubic
from refdiff_cli.metrics import mask_counts, mask_scores
from refdiff_cli.train_references import synthesised_reference

SCALE = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chips", type=Path)
    parser.add_argument("--chips", dest="limit", type=int, default=160)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = ChipDataset(args.chips, "train")
    picks = np.random.default_rng(0).choice(len(data), min(args.limit, len(data)), replace=False)
    cases: dict[str, list[tuple[torch.Tensor, ...]]] = {"real": [], "synth": []}
    for i in picks:
        chip = data.chip(int(i))
        hr = torch.from_numpy(chip.hr.astype(np.float32))
        valid = torch.from_numpy(chip.hr_valid.copy())
        ref = torch.from_numpy(chip.ref.astype(np.float32))
        mask = torch.from_numpy(chip.mask.astype(np.float32))
        ref_valid = torch.from_numpy(chip.ref_valid.copy())
        if not torch.equal(ref, hr):  # a cross-date pair (single-date chips hold ref = HR)
            cases["real"].append((hr[None], ref[None], mask[None], ref_valid[None]))
        rng = np.random.default_rng(int(i))
        s_ref, s_mask, s_valid = synthesised_reference(hr, valid, rng)
        cases["synth"].append((hr[None], s_ref[None], s_mask[None], s_valid[None]))
    print({k: len(v) for k, v in cases.items()}, "chips")
    measured = {kind: [measure(*case) for case in items] for kind, items in cases.items()}
    grid = list(itertools.product((0.5, 0.7, 0.8, 0.9, 0.95, 1.0), (1.0, 1.5, 2.0, 3.0, 1e9)))
    print("| structure | radiometric | real F1 | synthesised F1 |")
    print("|---|---|---|---|")
    for structure, radiometric in grid:
        config = ChangeConfig(structure_threshold=structure, radiometric_threshold=radiometric)
        f1s = [
            pooled_f1([(decide(e, config, SCALE), truth) for e, _, truth in kind])
            for kind in measured.values()
        ]
        print(f"| {structure} | {radiometric:g} | {f1s[0]:.3f} | {f1s[1]:.3f} |")
    cva = [pooled_f1([(c, truth) for _, c, truth in kind]) for kind in measured.values()]
    print(f"| CVA (Otsu) | | {cva[0]:.3f} | {cva[1]:.3f} |")


def measure(
    hr: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, ref_valid: torch.Tensor
) -> tuple[ChangeEvidence, torch.Tensor, torch.Tensor]:
    """The estimator's evidence, the CVA mask and the labels of one case."""
    lr = downscale_bicubic(hr, SCALE)
    evidence = change_evidence(lr, ref, ref_valid=ref_valid, scale=SCALE)
    cva = change_vector_analysis(lr, ref, ref_valid=ref_valid, scale=SCALE)
    return evidence, cva, mask[:, :1]


def pooled_f1(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """F1 over all pixels of all (predicted, label) pairs."""
    predicted = torch.cat([p.flatten() > 0.5 for p, _ in pairs]).numpy()
    truth = torch.cat([t.flatten() > 0.5 for _, t in pairs]).numpy()
    return mask_scores(mask_counts(predicted, truth))["f1"]


if __name__ == "__main__":
    main()
