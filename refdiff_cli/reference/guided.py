"""Guided reference transfer: register the reference to the LR, match its colours, add its detail.

The classical ``guided`` method of refdiff (engine and evaluation method) and the first stage
of the reference-guided models. Pure torch on batches of tiles in model space ([-1, 1]); every
fit is made at LR scale, where the LR is the truth, so no ground truth is ever needed.

Notation: ``s`` the scale, ``D`` the antialiased bicubic downscale by ``s`` (the degradation
the LR is assumed to come from), ``U`` bicubic upsampling by ``s`` (LR_up = U(LR)), ``B_r``
the mean over a (2r+1)^2 window (normalised at tile borders), ``R`` the reference on the
output grid, ``L`` the LR.

1. **Registration.** For a shift ``d`` (output pixels) let ``R_d(p) = R(p + d)``. Its cost at
   LR scale is ``E_d = (1 - NCC_r(hp L, hp D(R_d))) (1 + shift_prior |d|)``: one minus the
   local normalised cross-correlation of the high-passes ``hp x = x - B_1(x)`` (averaged over
   bands), with a prior for no shift. A global shift ``d_0`` minimises the tile mean of
   ``E_d`` over integer shifts within
   ``search_px``; around it, each LR pixel picks among shifts ``d_0 + {-1, -1/2, 0, 1/2, 1}^2``
   the one whose cost, averaged over a ``2 radius`` window, is least. The resulting shift
   field is smoothed, upsampled and applied with bicubic resampling: ``R_w``.
2. **Radiometry.** Per band and LR pixel, guided-filter coefficients (He et al. 2013) with
   guide ``G = D(R_w)`` and input ``L`` over the (2r+1)^2 window, as a ridge fit shrunk
   towards the tile's own least-squares gain ``a_0``:
   ``a = (cov(G, L) + eps a_0) / (var G + eps)``, ``b = mean L - a mean G``; both are
   averaged over the window and bilinearly upsampled: ``T = a R_w + b`` (the reference in the
   LR's colours, at full resolution). Shrinking towards ``a_0`` rather than 0 keeps the
   detail of areas that look flat at LR scale (crop rows, roof tiles).
3. **Trust.** The share of the LR's local variance the fit leaves unexplained,
   ``u = (var L - 2 a cov + a^2 var G) / (var L + noise_var)`` (mean over bands, averaged
   over the window), gives the agreement ``1 - u`` and the weight
   ``w = clip((1 - u - trust_low) / (trust_high - trust_low), 0, 1) * (1 - M) * valid``:
   0 where the mask says changed, where the reference has no data, or where the reference
   does not explain the LR (another place, a 37 px misregistration, a flat grey image).
4. **Detail and consistency.** ``X_0 = U(L) + w (T - U(D(T)))`` adds the detail of ``T`` that
   the LR cannot see; ``consistency_steps`` back-projections ``X <- X + w U(L - D(X))`` then
   make ``D(X)`` approach ``L`` where the reference is used. Where ``w = 0`` the result is
   exactly bicubic ``U(L)``.

All ranges and constants (``GuidedConfig``) are ours; the trust thresholds were chosen on
training chips (``scripts/tune_guided.py``: real cross-date pairs and synthesised
references), never on validation data.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from refdiff_cli.data.resample import downscale_bicubic, upsample


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GuidedConfig:
    """Constants of the guided transfer (ours).

    Attributes:
        radius: half-width r of the local linear fit's window, LR pixels (window 2r+1).
        eps: regularisation of the fit, model units squared ([-1, 1] data: 1e-4 is about
            1.3 DN of an 8-bit image, squared).
        search_px: largest global shift tried, output pixels (integer steps).
        shift_prior: relative registration cost added per output pixel of shift (a shift
            must beat no shift by this margin per pixel; 0.05 = 5 %).
        local_px: largest local refinement around the global shift, output pixels.
        local_step_px: step of the local refinement, output pixels.
        noise_var: variance added to the LR's local variance before the unexplained share
            is taken, model units squared (flat areas are not judged on their noise).
        trust_low, trust_high: agreement (1 - unexplained share, 0..1) at which the
            reference's detail starts to be used, and is fully used.
        consistency_steps: back-projection iterations towards ``D(X) = L``.
    """

    radius: int = 3
    eps: float = 1e-4
    search_px: int = 4
    shift_prior: float = 0.05
    local_px: float = 1.0
    local_step_px: float = 0.5
    noise_var: float = 1e-4
    trust_low: float = 0.2
    trust_high: float = 0.7
    consistency_steps: int = 1

    def __post_init__(self) -> None:
        if self.radius < 1 or self.search_px < 0 or self.consistency_steps < 0:
            raise ValueError("radius >= 1, search_px >= 0 and consistency_steps >= 0 required")
        if not (self.eps > 0 and self.local_step_px > 0 and self.local_px >= 0):
            raise ValueError("eps and local_step_px must be positive, local_px >= 0")
        if not 0 <= self.trust_low < self.trust_high <= 1:
            raise ValueError("need 0 <= trust_low < trust_high <= 1")

    def reach_lr(self) -> int:
        """How far (LR pixels) a value depends on its neighbourhood: windows, smoothing, cubic."""
        return 4 * self.radius + 4


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GuidedResult:
    """The guided estimate of a batch and what it is made of (all at output size H x W).

    Attributes:
        estimate: (B, C, H, W) the guided estimate X, model space (not clamped).
        weight: (B, 1, H, W) w in [0, 1]: how much of the reference's detail each pixel took.
        agreement: (B, 1, H, W) 1 - u in [0, 1] (step 3), before the mask and validity.
        shift: (B, 2, H, W) the registration shift (dy, dx) applied, output pixels.
    """

    estimate: torch.Tensor
    weight: torch.Tensor
    agreement: torch.Tensor
    shift: torch.Tensor


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2 radius + 1)^2 window, over the pixels inside the image at its borders."""
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def shift_image(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` (N, C, h, w) at ``p + shift``: ``out(p) = x(p + shift)``, bicubic.

    Args:
        x: (N, C, h, w) image.
        shift: (N, 2, h, w) per-pixel (dy, dx) or (N, 2) per image, in pixels of ``x``.
            Outside the image the border value is repeated.
    """
    n, _, h, w = x.shape
    if shift.ndim == 2:
        shift = shift[:, :, None, None].expand(n, 2, h, w)
    rows = torch.arange(h, dtype=x.dtype, device=x.device)
    cols = torch.arange(w, dtype=x.dtype, device=x.device)
    y = rows[None, :, None] + shift[:, 0]  # (N, h, w) source row
    xx = cols[None, None, :] + shift[:, 1]
    grid = torch.stack([(2 * xx + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)  # align_corners=False
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)


@dataclasses.dataclass(frozen=True, slots=True)
class _Fit:
    """Local linear fit L ~ a G + b per band at LR scale, window means."""

    a: torch.Tensor
    b: torch.Tensor
    cost: torch.Tensor  # (N, 1, h, w) residual variance, mean over bands
    unexplained: torch.Tensor  # (N, 1, h, w) residual / (var L + noise_var), mean over bands


def _fit(
    guide: torch.Tensor, target: torch.Tensor, config: GuidedConfig, prior: torch.Tensor | None
) -> _Fit:
    """Local ridge fit of ``target ~ a guide + b`` per band, ``a`` shrunk towards ``prior``."""
    r, eps = config.radius, config.eps
    mean_g, mean_t = box_mean(guide, r), box_mean(target, r)
    var_g = (box_mean(guide * guide, r) - mean_g**2).clamp(min=0)
    var_t = (box_mean(target * target, r) - mean_t**2).clamp(min=0)
    cov = box_mean(guide * target, r) - mean_g * mean_t
    a0 = torch.zeros_like(cov) if prior is None else prior.expand_as(cov)
    a = (cov + eps * a0) / (var_g + eps)
    b = mean_t - a * mean_g
    # Residual variance of the window's fit: var_t - 2 a cov + a^2 var_g.
    residual = (var_t - 2 * a * cov + a * a * var_g).clamp(min=0)
    cost = residual.mean(dim=1, keepdim=True)
    unexplained = (residual / (var_t + config.noise_var)).mean(dim=1, keepdim=True)
    return _Fit(a=a, b=b, cost=cost, unexplained=unexplained)


def _global_gain(guide: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, C, 1, 1) least-squares gain of ``target`` on ``guide`` over each whole tile."""
    g = guide - guide.mean(dim=(2, 3), keepdim=True)
    t = target - target.mean(dim=(2, 3), keepdim=True)
    return (g * t).mean(dim=(2, 3), keepdim=True) / ((g * g).mean(dim=(2, 3), keepdim=True) + eps)


def _candidates(limit: float, step: float, device: torch.device) -> torch.Tensor:
    """(K, 2) shifts (dy, dx) on a square grid of ``step`` within +-limit, zero first."""
    n = math.floor(limit / step + 1e-9)
    values = torch.arange(-n, n + 1, dtype=torch.float32, device=device) * step
    dy, dx = torch.meshgrid(values, values, indexing="ij")
    grid = torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)
    order = torch.argsort(grid.abs().sum(dim=1), stable=True)  # ties go to the smallest shift
    return grid[order]


def _costs(
    ref_lr: torch.Tensor,
    lr: torch.Tensor,
    shifts: torch.Tensor,
    scale: int,
    config: GuidedConfig,
    prior: float,
    centre: torch.Tensor,
) -> torch.Tensor:
    """(B, K, h, w) registration cost of the reference shifted by each of ``shifts``.

    The cost is 1 - the local normalised cross-correlation of the LR-scale high-pass
    (``x - B_1(x)``) of ``L`` and ``D(R_d)``, averaged over bands, times
    ``1 + shift_prior |d|``: a shift must explain the LR clearly better than no shift
    before it is taken (shadows and parallax of another date otherwise pull it off).
    The prior counts from ``centre`` (B, 2): zero for the global search, the global shift
    for the local refinement.

    Args:
        ref_lr: (B, C, h, w) ``D(R)``.
        lr: (B, C, h, w) ``L``.
        shifts: (B, K, 2) candidate shifts (dy, dx), output pixels.
    """
    b, k = shifts.shape[:2]
    h, w = lr.shape[-2:]
    moved = shift_image(ref_lr.repeat_interleave(k, dim=0), shifts.reshape(b * k, 2) / scale)
    g = (moved - box_mean(moved, 1)).reshape(b, k, -1, h, w)  # (B, K, C, h, w)
    t = lr - box_mean(lr, 1)  # (B, C, h, w): the LR's terms are the same for every shift
    r = config.radius

    def per_shift(x: torch.Tensor) -> torch.Tensor:  # (B, K, C, h, w) -> the same, boxed
        return box_mean(x.flatten(0, 1), r).reshape(b, k, -1, h, w)

    energy_t = box_mean(t * t, r)[:, None]  # (B, 1, C, h, w)
    ncc = per_shift(g * t[:, None]) / (per_shift(g * g) * energy_t + 1e-8).sqrt()
    penalty = 1 + prior * (shifts - centre[:, None]).norm(dim=2)  # (B, K)
    cost: torch.Tensor = (1 - ncc.mean(dim=2)) * penalty[:, :, None, None]  # (B, K, h, w)
    return cost


def register(ref: torch.Tensor, lr: torch.Tensor, scale: int, config: GuidedConfig) -> torch.Tensor:
    """Step 1: the shift field (B, 2, h, w), output pixels, that best explains ``lr`` by ``ref``.

    Args:
        ref: (B, C, H, W) reference on the output grid, model space, no holes.
        lr: (B, C, h, w) LR, model space.
    """
    ref_lr = downscale_bicubic(ref, scale)  # (B, C, h, w)
    b, _, h, w = lr.shape
    coarse = _candidates(config.search_px, 1.0, lr.device)  # (K, 2)
    zero = torch.zeros((b, 2), device=lr.device)
    cost = _costs(ref_lr, lr, coarse.expand(b, -1, -1), scale, config, config.shift_prior, zero)
    cost = cost.mean(dim=(2, 3))
    global_shift = coarse[cost.argmin(dim=1)]  # (B, 2)
    fine = _candidates(config.local_px, config.local_step_px, lr.device)  # (J, 2)
    local = global_shift[:, None, :] + fine[None]  # (B, J, 2)
    local_cost = _costs(ref_lr, lr, local, scale, config, config.shift_prior, global_shift)
    local_cost = box_mean(local_cost, 2 * config.radius)
    best = local_cost.argmin(dim=1)  # (B, h, w), ties to the smallest refinement
    field = torch.gather(
        local.permute(0, 2, 1)[:, :, :, None].expand(b, 2, local.shape[1], h * w),
        2,
        best.reshape(b, 1, 1, h * w).expand(b, 2, 1, h * w),
    ).reshape(b, 2, h, w)
    return box_mean(field, config.radius)  # smooth: no jumps between neighbouring pixels


def guided_transfer(
    lr: torch.Tensor,
    ref: torch.Tensor,
    *,
    mask: torch.Tensor,
    ref_valid: torch.Tensor,
    scale: int,
    config: GuidedConfig | None = None,
    shift: torch.Tensor | None = None,
) -> GuidedResult:
    """The guided estimate of the output tiles (steps 1-4 of the module docstring).

    Args:
        lr: (B, C, h, w) LR tiles, model space.
        ref: (B, C, H, W) reference warped onto the output tiles, model space; anything where
            ``ref_valid`` is False.
        mask: (B, M, H, W) change mask in [0, 1] (1 = changed); channels beyond the first
            are ignored.
        ref_valid: (B, 1, H, W) bool, False where the reference has no data.
        scale: integer factor s; H = h s, W = w s.
        config: constants; None takes ``GuidedConfig()``.
        shift: (B, 2, H, W) a registration already made (``reference_shift`` on other bands
            of the same tiles, e.g. RGB for a NIR band); None registers these bands (step 1).

    Returns:
        ``GuidedResult``; ``estimate`` equals ``upsample(lr, scale, clamp=False)`` wherever
        ``weight`` is 0.
    """
    config = config or GuidedConfig()
    lr = lr.float()
    lr_up = upsample(lr, scale, clamp=False)  # (B, C, H, W)
    valid = ref_valid.to(lr.dtype)
    ref = _filled(ref, ref_valid, lr_up)
    if shift is None:
        shift = _upsampled_shift(register(ref, lr, scale, config), scale)
    warped = shift_image(ref, shift)  # R_w, (B, C, H, W)
    warped_lr = downscale_bicubic(warped, scale)
    fit = _fit(warped_lr, lr, config, _global_gain(warped_lr, lr, config.eps))
    a = F.interpolate(box_mean(fit.a, config.radius), scale_factor=scale, mode="bilinear")
    b = F.interpolate(box_mean(fit.b, config.radius), scale_factor=scale, mode="bilinear")
    matched = a * warped + b  # T
    detail = matched - upsample(downscale_bicubic(matched, scale), scale, clamp=False)
    unexplained = box_mean(fit.unexplained, config.radius)
    agreement = F.interpolate((1 - unexplained).clamp(0, 1), scale_factor=scale, mode="bilinear")
    ramp = (agreement - config.trust_low) / (config.trust_high - config.trust_low)
    weight = ramp.clamp(0, 1) * (1 - mask[:, :1].float().clamp(0, 1)) * valid
    weight = weight * downscale_valid(valid, scale)  # no detail next to a hole
    estimate = lr_up + weight * detail
    for _ in range(config.consistency_steps):
        residual = lr - downscale_bicubic(estimate, scale)
        estimate = estimate + weight * upsample(residual, scale, clamp=False)
    return GuidedResult(estimate=estimate, weight=weight, agreement=agreement, shift=shift)


def reference_shift(
    lr: torch.Tensor,
    ref: torch.Tensor,
    *,
    ref_valid: torch.Tensor,
    scale: int,
    config: GuidedConfig | None = None,
) -> torch.Tensor:
    """Step 1 alone: the shift (B, 2, H, W), output pixels, that ``guided_transfer`` applies.

    Arguments as ``guided_transfer``'s. Pass the result as its ``shift`` to transfer other
    bands of the same tiles with this registration.
    """
    config = config or GuidedConfig()
    lr = lr.float()
    ref = _filled(ref, ref_valid, upsample(lr, scale, clamp=False))
    return _upsampled_shift(register(ref, lr, scale, config), scale)


def _filled(ref: torch.Tensor, ref_valid: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
    """The reference in [-1, 1], with LR_up where it has no data (nothing to register there)."""
    return torch.where(ref_valid, ref.float().clamp(-1.0, 1.0), lr_up)


def _upsampled_shift(field: torch.Tensor, scale: int) -> torch.Tensor:
    """A (B, 2, h, w) LR-scale shift field bilinearly upsampled to (B, 2, H, W)."""
    return F.interpolate(field, scale_factor=scale, mode="bilinear", align_corners=False)


def downscale_valid(valid: torch.Tensor, scale: int) -> torch.Tensor:
    """1 where a whole LR cell's neighbourhood has reference data, else 0, at output size."""
    cells = -F.max_pool2d(-valid, scale)  # (B, 1, h, w): 1 if every pixel of the cell is valid
    cells = -F.max_pool2d(-cells, 3, stride=1, padding=1)
    return F.interpolate(cells, scale_factor=scale, mode="nearest")
