"""EDM preconditioning: D(x; sigma, cond) = c_skip x + c_out F(c_in x, c_noise, cond).

Karras et al., NeurIPS 2022, Table 1 ("Ours") and Eq. 7. ``x``, ``sigma`` and ``D_x`` are always
float32; only the network runs in reduced precision, under ``torch.autocast``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from refdiff_cli.config import TARGET_SIGMA_DATA, ReferenceMode
from refdiff_cli.data.resample import UpsampleMode, upsample
from refdiff_cli.model.network import RefDiffUNet, check_shape
from refdiff_cli.reference.guided import GuidedConfig, guided_transfer

#: What a Ref-Diff model generates: the HR image (the paper), or the residual HR - LR_up, for
#: which even an untrained network's denoised estimate D(x; sigma_max) is LR_up itself.
TARGETS = tuple(TARGET_SIGMA_DATA)

#: Precisions the network may run in; float32 means no autocast.
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Conditioning:
    """The conditions of one batch, at HR size, in model space.

    Attributes:
        lr_up: (B, C, H, W) float32 LR upsampled to HR size, in [-1, 1].
        ref: (B, C, H, W) float32 older HR reference, in [-1, 1].
        mask: (B, M, H, W) float32 change mask, in [0, 1] (1 = changed).
    """

    lr_up: torch.Tensor
    ref: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        b, c, h, w = self.lr_up.shape
        check_shape("Conditioning.ref", self.ref, (b, c, h, w))
        check_shape("Conditioning.mask", self.mask, (b, None, h, w))

    def to(self, device: torch.device | str) -> Conditioning:
        """Return the same conditions on ``device`` (no copy if already there)."""
        return Conditioning(
            lr_up=self.lr_up.to(device), ref=self.ref.to(device), mask=self.mask.to(device)
        )


def make_conditioning(
    *, lr_up: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, ref_valid: torch.Tensor
) -> Conditioning:
    """The conditions of Ref-Diff, with the one rule for pixels that have no reference.

    Where ``ref_valid`` is False, Ref := LR_up and M := 1 ("changed"), so the network
    reconstructs from LR alone there; the reference is clamped to [-1, 1] like LR_up, since
    the normalisation does not clip (``data/normalize.py``). Training and inference both call
    this function.

    Args:
        lr_up: (B, C, H, W) float32 LR upsampled to HR size, in [-1, 1].
        ref: (B, C, H, W) float32 reference in model space where valid (anything elsewhere).
        mask: (B, M, H, W) float32 change mask, in [0, 1] where valid.
        ref_valid: (B, 1, H, W) bool, False where the reference (or the mask) has no data.
    """
    return Conditioning(
        lr_up=lr_up,
        ref=torch.where(ref_valid, ref.clamp(-1.0, 1.0), lr_up),
        mask=torch.where(ref_valid, mask, 1.0),
    )


#: Mask channels the network gets per reference mode: M, or M and the guided trust weight w.
MASK_CHANNELS: dict[str, int] = {"raw": 1, "guided": 2}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Prepared:
    """A batch's network conditions and the base image the residual target is relative to.

    Attributes:
        cond: what the network sees.
        base: (B, C, H, W) LR_up ("raw") or the guided estimate X ("guided"), float32.
    """

    cond: Conditioning
    base: torch.Tensor


def prepare_conditions(
    *,
    lr: torch.Tensor,
    ref: torch.Tensor,
    mask: torch.Tensor,
    ref_valid: torch.Tensor,
    scale: int,
    reference: ReferenceMode,
    upsample_mode: UpsampleMode,
    guided_config: GuidedConfig | None = None,
    shift: torch.Tensor | None = None,
) -> Prepared:
    """The one way training and inference turn (LR, Ref, M) into network conditions.

    "raw" (the paper): LR_up, the warped reference and M (``make_conditioning``).
    "guided": the reference slot holds the guided estimate X of ``reference/guided.py`` (the
    reference registered to the LR, colour-matched and mixed with LR_up by the trust weight w),
    and the mask has a second channel, w itself; the residual target is then HR - X, so a
    network that outputs nothing gives the guided estimate back.

    Args:
        lr: (B, C, h, w) LR in model space.
        ref: (B, C, H, W) reference on the output grid (anything where ``ref_valid`` is False).
        mask: (B, 1, H, W) change mask in [0, 1].
        ref_valid: (B, 1, H, W) bool.
        scale: H / h.
        reference: "raw" or "guided".
        upsample_mode: the card's ``lr_upsample``.
        guided_config: the guided transfer's constants (the card's ``guided``); None takes
            ``GuidedConfig()``.
        shift: (B, 2, H, W) the guided registration of these tiles, made already with
            ``guided_config`` (``EngineBatch.ref_shift``); None registers them.
    """
    lr_up = upsample(lr, scale, mode=upsample_mode)  # (B, C, H, W) clamped to [-1, 1]
    if reference == "raw":
        cond = make_conditioning(lr_up=lr_up, ref=ref, mask=mask, ref_valid=ref_valid)
        return Prepared(cond=cond, base=lr_up)
    if reference != "guided":
        raise ValueError(f"unknown reference mode {reference!r}; use raw or guided")
    guided = guided_transfer(
        lr, ref, mask=mask, ref_valid=ref_valid, scale=scale, config=guided_config, shift=shift
    )
    changed = torch.where(ref_valid, mask[:, :1], 1.0)
    cond = Conditioning(
        lr_up=lr_up,
        ref=guided.estimate.clamp(-1.0, 1.0),
        mask=torch.cat([changed, guided.weight], dim=1),
    )
    return Prepared(cond=cond, base=guided.estimate)


def diffusion_target(hr: torch.Tensor, base: torch.Tensor, target: str) -> torch.Tensor:
    """What the diffusion model learns to generate from ``hr``: the image or HR - base.

    ``base`` is ``Prepared.base``: LR_up for the "raw" reference mode, the guided estimate for
    "guided".
    """
    return hr - base if target == "residual" else hr


def image_from_target(x0: torch.Tensor, base: torch.Tensor, target: str) -> torch.Tensor:
    """The HR image from a sample of the diffusion target (inverse of ``diffusion_target``)."""
    return x0 + base if target == "residual" else x0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Coefficients:
    """EDM preconditioning coefficients for a batch of noise levels, each shaped like sigma."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> Coefficients:
    """Return c_skip, c_out, c_in and c_noise of EDM Table 1 for noise levels ``sigma`` > 0.

    Args:
        sigma: noise standard deviations (any shape), > 0, in model units.
        sigma_data: standard deviation of the clean data (0.5 for data in [-1, 1]).
    """
    sd2 = sigma_data**2
    s2 = sigma**2
    c_skip = sd2 / (s2 + sd2)  # Eq. 7 / Table 1: sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out = sigma * sigma_data / (s2 + sd2).sqrt()  # sigma sigma_data / sqrt(sigma^2 + sd^2)
    c_in = 1 / (s2 + sd2).sqrt()  # 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = sigma.log() / 4  # ln(sigma) / 4
    return Coefficients(c_skip=c_skip, c_out=c_out, c_in=c_in, c_noise=c_noise)


class EDMPrecond(nn.Module):
    """Wraps ``RefDiffUNet`` as the denoiser D(x; sigma, cond) of EDM.

    Args:
        net: the raw network F.
        sigma_data: standard deviation of the clean data in model space (0.5 for [-1, 1]).
    """

    def __init__(self, net: RefDiffUNet, *, sigma_data: float = 0.5) -> None:
        super().__init__()
        if not (math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data}")
        self.net = net
        self.sigma_data = sigma_data

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        cond: Conditioning,
        *,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Denoise ``x`` at noise level ``sigma``.

        Args:
            x: (B, C, H, W) noisy image in model units (cast to float32).
            sigma: (B,) or scalar noise standard deviation(s), > 0 (e.g. 0.002..80).
            cond: conditions at the same H x W, on the same device as ``x``.
            dtype: precision of the network: None or float32 (full), bfloat16 or float16
                (autocast on ``x``'s device type). Everything outside the network is float32.

        Returns:
            (B, C, H, W) float32 ``D_x``, the estimate of the clean image.
        """
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        x = x.to(torch.float32)
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(b)
        check_shape("sigma", sigma, (b,))
        coef = edm_coefficients(sigma, self.sigma_data)  # each (B,)
        x_in = coef.c_in[:, None, None, None] * x  # (B, C, H, W), O(1) at any sigma

        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            F_x = self.net(x_in, coef.c_noise, cond.lr_up, cond.ref, cond.mask)  # (B, C, H, W)
        # Eq. 7: D_x = c_skip x + c_out F_x, in float32 whatever the network's precision.
        c_skip = coef.c_skip[:, None, None, None]
        c_out = coef.c_out[:, None, None, None]
        D_x: torch.Tensor = c_skip * x + c_out * F_x.to(torch.float32)
        return D_x
