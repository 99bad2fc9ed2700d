"""Change masks estimated from the LR and the reference, for runs without a ``--mask``.

Both estimators work on batches of tiles in model space ([-1, 1]) and judge each LR cell
(one LR pixel, ``s`` x ``s`` output pixels), where the LR is the truth; the mask they return is
on the output grid, 1 = changed, 0 = unchanged. Notation as in ``guided.py``: ``L`` the LR,
``R`` the reference on the output grid, ``D`` the antialiased bicubic downscale by ``s``.

**Reference disagreement (refdiff's estimator).** The guided transfer registers ``R`` to
``L`` and fits a local linear colour model ``L ~ a D(R_w) + b`` over (2r+1)^2 LR windows
(``guided.py`` steps 1-3). Two things say the land changed:

- *structure*: the share ``u`` of the LR's local variance that the fit leaves unexplained
  (the guided transfer's ``1 - agreement``) exceeds ``structure_threshold``: the reference's
  edges and texture are not the LR's;
- *radiometry*: the local fit can absorb any brightness change (its offset ``b`` is local),
  so a field paved over can explain the LR perfectly. Against one colour model per tile,
  ``L ~ a_0 D(R_w) + b_0`` (least squares per band), the residual ``e`` (RMS over bands) is
  compared with its robust spread over the tile, ``sigma_e = 1.4826 median |e - median e|``
  plus ``noise_floor``: a cell whose ``e - median e`` exceeds ``radiometric_threshold``
  ``sigma_e`` changed.

The radiometric test is a hysteresis (as in Canny's edge detector): a cell above
``radiometric_threshold`` counts only when its connected region of such cells (8-neighbours)
holds a *seed*: a cell above ``radiometric_seed``, a structure change or a cell the reference
does not cover. A changed building or field is a connected region with a strong core; a
z-score above 1.5 also fires in about 7 % of the cells of a tile that did not change, in
clusters where the residual is spatially correlated, and those clusters rarely reach the
seed. A cell is changed if it has a seed or belongs to a seeded region; a 3 x 3 majority vote
then removes isolated cells, and each cell's verdict covers its ``s`` x ``s`` output pixels.
The thresholds were chosen on training chips (``scripts/tune_change.py``), never on
validation data.

**Change vector analysis (the classical baseline).** The magnitude ``|L - D(R_w)|`` (over
bands) of each cell, thresholded by Otsu's method over the tile; reported beside refdiff's
estimator by ``benchmarks/change_mask.py``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from refdiff_cli.data.resample import downscale_bicubic
from refdiff_cli.reference.guided import (
    GuidedConfig,
    GuidedResult,
    box_mean,
    downscale_valid,
    guided_transfer,
    shift_image,
)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ChangeConfig:
    """Thresholds of the reference-disagreement estimator (chosen on training chips).

    Attributes:
        structure_threshold: unexplained share ``u`` (0..1) above which a cell changed.
        radiometric_threshold: tile-colour residual, in robust spreads above the tile's
            median, above which a cell changed if its region holds a seed.
        radiometric_seed: the same residual above which a cell is a seed (>= the threshold;
            equal to it: no hysteresis).
        noise_floor: added to the robust spread, model units (0.02 = 2.5 DN of 8-bit data),
            so that a tile that matches almost perfectly is not judged on its noise.
    """

    structure_threshold: float = 0.9
    radiometric_threshold: float = 1.5
    radiometric_seed: float = 6.0
    noise_floor: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 < self.structure_threshold <= 1.0:
            raise ValueError(f"structure_threshold {self.structure_threshold} is not in (0, 1]")
        if self.radiometric_threshold <= 0 or self.noise_floor < 0:
            raise ValueError("radiometric_threshold must be positive and noise_floor >= 0")
        if self.radiometric_seed < self.radiometric_threshold:
            raise ValueError(
                f"radiometric_seed {self.radiometric_seed} is below radiometric_threshold "
                f"{self.radiometric_threshold}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ChangeEvidence:
    """What the estimator measures per LR cell of a batch, before any threshold.

    Attributes:
        structure: (B, 1, h, w) the unexplained share ``u`` (0..1).
        excess: (B, 1, h, w) the tile-colour residual ``e`` minus its tile median, model units.
        residual_spread: (B, 1, 1, 1) the robust spread ``sigma_e`` of each tile, model units.
        cells_valid: (B, 1, h, w) bool, True where the reference covers the cell.
    """

    structure: torch.Tensor
    excess: torch.Tensor
    residual_spread: torch.Tensor
    cells_valid: torch.Tensor


def estimate_change(
    lr: torch.Tensor,
    ref: torch.Tensor,
    *,
    ref_valid: torch.Tensor,
    scale: int,
    guided: GuidedConfig | None = None,
    config: ChangeConfig | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference-disagreement change mask (B, 1, H, W), 0/1, 1 = changed (module docstring).

    Args:
        lr: (B, C, h, w) LR tiles, model space.
        ref: (B, C, H, W) reference on the output tiles, model space.
        ref_valid: (B, 1, H, W) bool, False where the reference has no data.
        scale: integer factor s; H = h s.
        guided: the guided transfer's constants (registration and local fit).
        config: the thresholds; None takes ``ChangeConfig()``.
        shift: (B, 2, H, W) the registration ``guided.reference_shift`` made of these tiles
            with ``guided``, to reuse; None registers them.
    """
    evidence = change_evidence(
        lr, ref, ref_valid=ref_valid, scale=scale, guided=guided, shift=shift
    )
    return decide(evidence, config or ChangeConfig(), scale)


def change_evidence(
    lr: torch.Tensor,
    ref: torch.Tensor,
    *,
    ref_valid: torch.Tensor,
    scale: int,
    guided: GuidedConfig | None = None,
    shift: torch.Tensor | None = None,
) -> ChangeEvidence:
    """Measure structure and radiometric disagreement per LR cell (arguments as above)."""
    lr = lr.float()
    result, warped_lr = register_to_lr(lr, ref, ref_valid, scale, guided, shift)
    structure = 1 - F.avg_pool2d(result.agreement, scale)  # (B, 1, h, w)
    residual = tile_colour_residual(warped_lr, lr)
    centre = residual.flatten(1).median(dim=1).values[:, None, None, None]
    spread = 1.4826 * (residual - centre).abs().flatten(1).median(dim=1).values
    cells_valid = F.avg_pool2d(downscale_valid(ref_valid.to(lr.dtype), scale), scale) > 0.5
    return ChangeEvidence(
        structure=structure,
        excess=residual - centre,
        residual_spread=spread[:, None, None, None],
        cells_valid=cells_valid,
    )


def decide(evidence: ChangeEvidence, config: ChangeConfig, scale: int) -> torch.Tensor:
    """The thresholds with the radiometric hysteresis, the 3 x 3 majority vote and the cells'
    output pixels: (B, 1, H, W) 0/1."""
    radiometry = evidence.excess / (evidence.residual_spread + config.noise_floor)
    seeds = (
        (evidence.structure > config.structure_threshold)
        | (radiometry > config.radiometric_seed)
        | ~evidence.cells_valid
    )
    changed = grow_regions(seeds, seeds | (radiometry > config.radiometric_threshold))
    return to_output(majority(changed.to(evidence.structure.dtype)), scale)


def grow_regions(seeds: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The cells of ``allowed`` (B, 1, h, w) bool 8-connected to a cell of ``seeds`` (inside it)."""
    grown = seeds & allowed
    while True:  # each pass reaches one cell further; at most h w passes, usually a few
        wider = (F.max_pool2d(grown.float(), 3, stride=1, padding=1) > 0) & allowed
        if torch.equal(wider, grown):
            return grown
        grown = wider


def change_vector_analysis(
    lr: torch.Tensor, ref: torch.Tensor, *, ref_valid: torch.Tensor, scale: int
) -> torch.Tensor:
    """The classical baseline: Otsu threshold of ``|L - D(R_w)|`` per tile, (B, 1, H, W) 0/1.

    ``R_w`` is the reference registered by the guided transfer (the same registration as
    ``estimate_change``), so the two estimators differ only in how they judge a cell.
    """
    lr = lr.float()
    _, warped_lr = register_to_lr(lr, ref, ref_valid, scale, None)
    magnitude = (lr - warped_lr).pow(2).sum(dim=1, keepdim=True).sqrt()  # (B, 1, h, w)
    thresholds = torch.stack([otsu_threshold(m.flatten()) for m in magnitude])
    changed = magnitude > thresholds[:, None, None, None]
    return to_output(changed.to(lr.dtype), scale)


def register_to_lr(
    lr: torch.Tensor,
    ref: torch.Tensor,
    ref_valid: torch.Tensor,
    scale: int,
    guided: GuidedConfig | None,
    shift: torch.Tensor | None = None,
) -> tuple[GuidedResult, torch.Tensor]:
    """The guided transfer without a mask (its registration, or ``shift``, and local fit), and
    ``D(R_w)``: the reference shifted by the registration field and brought to LR scale."""
    no_mask = torch.zeros_like(ref_valid, dtype=lr.dtype)
    result = guided_transfer(
        lr, ref, mask=no_mask, ref_valid=ref_valid, scale=scale, config=guided, shift=shift
    )
    lr_up = F.interpolate(lr, scale_factor=scale, mode="nearest")
    filled = torch.where(ref_valid, ref.float().clamp(-1.0, 1.0), lr_up)
    return result, downscale_bicubic(shift_image(filled, result.shift), scale)


def tile_colour_residual(guide: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RMS over bands of ``target - (a_0 guide + b_0)``, one least-squares fit per tile and band."""
    g = guide - guide.mean(dim=(2, 3), keepdim=True)
    t = target - target.mean(dim=(2, 3), keepdim=True)
    a0 = (g * t).mean(dim=(2, 3), keepdim=True) / ((g * g).mean(dim=(2, 3), keepdim=True) + 1e-6)
    return (t - a0 * g).pow(2).mean(dim=1, keepdim=True).sqrt()


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of a 1-D tensor: the cut that maximises the between-class variance."""
    low, high = values.min(), values.max()
    if float(high - low) <= 0:
        return high
    hist = torch.histc(values, bins=bins, min=float(low), max=float(high))
    centres = low + (torch.arange(bins, dtype=values.dtype) + 0.5) * (high - low) / bins
    weight = hist.cumsum(0)
    mass = (hist * centres).cumsum(0)
    total, total_mass = weight[-1], mass[-1]
    w0, w1 = weight, total - weight
    mean0 = mass / w0.clamp(min=1e-12)
    mean1 = (total_mass - mass) / w1.clamp(min=1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return centres[int(between.argmax())] + (high - low) / (2 * bins)


def majority(cells: torch.Tensor) -> torch.Tensor:
    """3 x 3 majority vote of a 0/1 cell map (B, 1, h, w); borders vote among the cells present."""
    votes = box_mean(cells, 1)
    return (votes > 0.5).to(cells.dtype)


def to_output(cells: torch.Tensor, scale: int) -> torch.Tensor:
    """Each LR cell's verdict on its ``scale`` x ``scale`` output pixels."""
    return F.interpolate(cells, scale_factor=scale, mode="nearest")
