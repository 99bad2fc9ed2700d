"""Where each output pixel came from and how far to trust it: the layers of ``--trust-out``.

Band 1, the **reference weight** ``W`` (0 = LR only, 1 = the reference's detail, up to S with
``--ref-strength S``), is what the engine used: the guided transfer's trust weight for the
guided engine and guided-reference models, ``1 - M`` where the reference has data for
raw-reference models, 0 for bicubic (``Engine.reference_weight``).

Band 2, the **uncertainty** ``U``, predicts the absolute error of the pixel in output units.
An SR pixel's error is the detail the LR cannot show and the output got wrong. Where the
output rests on the LR alone, that missing detail scales with the finest detail the LR does
show (natural images have self-similar spectra); where it rests on a reference that explains
the LR, most of it is supplied. So, with ``tau`` the local RMS of the LR's high-pass
(``L - B_1(L)``, bands averaged, over 3 x 3 LR pixels, upsampled bilinearly) and ``w`` the
reference weight clipped to [0, 1]:

    U = k_0 + tau (k_lr (1 - w) + k_ref w)

in model units, then times the bands' mean half-range (model units to output units). The
gains ``k`` were fitted by least squares to the bundled model's absolute errors on training
chips (``scripts/calibrate_trust.py``); ``benchmarks/trust.py`` shows on held-out data that
the mean absolute error rises from the lowest to the highest uncertainty bin.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from refdiff_cli.reference.guided import box_mean


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class UncertaintyGains:
    """The gains of ``U = k_0 + tau (k_lr (1 - w) + k_ref w)`` (model units; fitted)."""

    k_0: float = 0.0
    k_lr: float = 1.0
    k_ref: float = 1.0


#: Fitted by scripts/calibrate_trust.py on 60 training chips (each with its own and with a
#: synthesised reference) with the bundled model: 7.9 M pixels.
UNCERTAINTY_GAINS = UncertaintyGains(k_0=0.0232, k_lr=1.149, k_ref=0.2146)


def lr_texture(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """``tau``: local RMS of the LR's high-pass, (B, 1, h s, w s), model units."""
    high_pass = lr.float() - box_mean(lr.float(), 1)
    energy = box_mean(high_pass.pow(2).mean(dim=1, keepdim=True), 1)  # (B, 1, h, w)
    return F.interpolate(energy.sqrt(), scale_factor=scale, mode="bilinear", align_corners=False)


def uncertainty(
    lr: torch.Tensor,
    weight: torch.Tensor,
    scale: int,
    gains: UncertaintyGains = UNCERTAINTY_GAINS,
) -> torch.Tensor:
    """``U`` of output tiles (B, 1, H, W), model units.

    Args:
        lr: (B, C, h, w) LR tiles, model space.
        weight: (B, 1, H, W) the reference weight the engine used (clipped to [0, 1] here).
        scale: integer factor s; H = h s.
        gains: the fitted gains.
    """
    w = weight.float().clamp(0.0, 1.0)
    tau = lr_texture(lr, scale)
    return gains.k_0 + tau * (gains.k_lr * (1 - w) + gains.k_ref * w)
