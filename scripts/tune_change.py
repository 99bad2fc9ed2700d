"""Choose the change estimator's thresholds on TRAINING chips (never validation data).

Usage: python scripts/tune_change.py CHIPS_DIR [--chips N]

For training chips (256 px, x8, bicubic LR of the HR) with a real cross-date reference and a
labelled change, and for references synthesised from the HR with the training nuisances
(``train/references.py``: colour shift, pasted/removed objects marked in the mask, 0-2 px
shift, noise), prints for each (structure_threshold, radiometric_threshold,
radiometric_seed) the pooled F1 of ``estimate_change`` against the labels, beside change
vector analysis, and what the estimate costs the guided transfer: its mean PSNR (dB, model
space) with the estimated mask minus with the label mask.

The rule that picks ``ChangeConfig``'s default (printed last): the largest mean of the two
F1s among the settings that cost the guided transfer at most ``DB_BUDGET`` on the
synthesised chips. The mask serves two readers: ``--mask-out`` wants a balanced change map
(F1); the engine loses most to false alarms in unchanged land (they throw good reference
detail away), and issue 10 allows the model 0.30 dB against the label mask. The model has
paid about 0.1 dB more on held-out images than the guided transfer on these chips (0.34 vs
0.235 at radiometric 1.5 without a seed), so the budget is 0.20. Without the radiometric
hysteresis (seed = threshold) the cost only falls by raising the threshold, which drops F1 on
cross-date pairs (at 3.0 below change vector analysis on LEVIR); the seed keeps the weak
cells of a strongly changed region and drops weak clusters without a strong core.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import torch

from refdiff_cli.data.resample import downscale_bicubic
from refdiff_cli.datasets.chips import ChipDataset
from refdiff_cli.metrics.scores import mask_counts, mask_scores
from refdiff_cli.reference.change import (
    ChangeConfig,
    ChangeEvidence,
    change_evidence,
    change_vector_analysis,
    decide,
)
from refdiff_cli.reference.guided import guided_transfer, reference_shift
from refdiff_cli.train.references import synthesised_reference

SCALE = 8
#: The most the estimated mask may cost the guided transfer on synthesised chips (dB).
DB_BUDGET = 0.20


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
    print("one guided transfer per chip and setting; this takes a few minutes")
    grid = itertools.product((0.9, 0.95), (1.25, 1.5, 2.0), (None, 4.0, 6.0, 8.0))
    print("| structure | radiometric | seed | real F1 | synth. F1 | real dB | synth. dB |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for structure, radiometric, seed in grid:
        config = ChangeConfig(
            structure_threshold=structure,
            radiometric_threshold=radiometric,
            radiometric_seed=radiometric if seed is None else seed,
        )
        f1s, gaps = [], []
        for kind in measured.values():
            masks = [decide(case.evidence, config, SCALE) for case in kind]
            pairs = list(zip(masks, kind, strict=True))
            f1s.append(pooled_f1([(m, case.truth) for m, case in pairs]))
            gaps.append(float(np.mean([case.psnr(m) - case.label_psnr for m, case in pairs])))
        rows.append((config, f1s, gaps))
        print(
            f"| {structure} | {radiometric:g} | {'-' if seed is None else f'{seed:g}'} "
            f"| {f1s[0]:.3f} | {f1s[1]:.3f} | {gaps[0]:+.3f} | {gaps[1]:+.3f} |"
        )
    cva = [pooled_f1([(case.cva, case.truth) for case in kind]) for kind in measured.values()]
    print(f"| CVA (Otsu) | | | {cva[0]:.3f} | {cva[1]:.3f} | | |")
    affordable = [r for r in rows if r[2][1] >= -DB_BUDGET]
    chosen = max(affordable, key=lambda r: sum(r[1]))[0]
    print(f"chosen (best mean F1 at a synthesised dB cost <= {DB_BUDGET}): {chosen}")


@dataclasses.dataclass
class Case:
    """One chip: the estimator's evidence, the CVA mask, the labels, and what the guided
    transfer needs to score a mask (its registration is computed once)."""

    hr: torch.Tensor
    lr: torch.Tensor
    ref: torch.Tensor
    ref_valid: torch.Tensor
    truth: torch.Tensor
    evidence: ChangeEvidence
    cva: torch.Tensor
    shift: torch.Tensor
    label_psnr: float = 0.0

    def psnr(self, mask: torch.Tensor) -> float:
        """PSNR (dB, peak 2: model space) of the guided transfer given ``mask``."""
        estimate = guided_transfer(
            self.lr,
            self.ref,
            mask=mask,
            ref_valid=self.ref_valid,
            scale=SCALE,
            shift=self.shift,
        ).estimate
        mse = float((estimate.clamp(-1, 1) - self.hr).pow(2).mean())
        return 10 * math.log10(4 / max(mse, 1e-12))


def measure(
    hr: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, ref_valid: torch.Tensor
) -> Case:
    """Everything the grid needs of one case."""
    lr = downscale_bicubic(hr, SCALE)
    case = Case(
        hr=hr,
        lr=lr,
        ref=ref,
        ref_valid=ref_valid,
        truth=mask[:, :1],
        evidence=change_evidence(lr, ref, ref_valid=ref_valid, scale=SCALE),
        cva=change_vector_analysis(lr, ref, ref_valid=ref_valid, scale=SCALE),
        shift=reference_shift(lr, ref, ref_valid=ref_valid, scale=SCALE),
    )
    case.label_psnr = case.psnr(case.truth)
    return case


def pooled_f1(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """F1 over all pixels of all (predicted, label) pairs."""
    predicted = torch.cat([p.flatten() > 0.5 for p, _ in pairs]).numpy()
    truth = torch.cat([t.flatten() > 0.5 for _, t in pairs]).numpy()
    return mask_scores(mask_counts(predicted, truth))["f1"]


if __name__ == "__main__":
    main()
