"""EDM training loss (Karras et al., NeurIPS 2022, Eq. 8 and Table 1, "Ours" column)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

C = TypeVar("C")

#: D(x; sigma, cond): x (B, C, H, W) float32, sigma (B,) float32 -> (B, C, H, W) float32.
ConditionalDenoiser = Callable[[Tensor, Tensor, C], Tensor]


def masked_mean(loss: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean of a per-pixel loss over the valid pixels (0, not NaN, when none is valid).

    Args:
        loss: (B, C, H, W) per-pixel loss.
        valid: (B, 1, H, W) bool, True where the target has data; None means all valid.

    Returns:
        0-d tensor: sum of the loss over valid pixels and all channels divided by
        (number of valid pixels x C); differentiable with respect to ``loss``.
    """
    if valid is None:
        return loss.mean()
    mask = valid.expand_as(loss)  # (B, C, H, W)
    count = int(mask.sum())
    return torch.where(mask, loss, torch.zeros_like(loss)).sum() / max(count, 1)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EDMLoss:
    """Per-pixel EDM denoising loss lambda(sigma) (D(y + n; sigma, cond) - y)^2.

    Attributes:
        P_mean: mean of ln(sigma) over training (-1.2 in EDM and Ref-Diff).
        P_std: standard deviation of ln(sigma), > 0 (1.2).
        sigma_data: standard deviation of the clean data in model space, > 0 (0.5 for [-1, 1]).
        mean_fraction: share of items, in [0, 1), trained at ``sigma_mean`` from the input
            x = 0 instead of y + n: the denoiser then learns D(0; sigma_mean) = E[y | cond],
            the start of the deterministic "mean" sampler (``SamplerConfig.start``). 0 (the
            default) draws nothing extra, so runs without it are unchanged.
        sigma_mean: the noise level of those items (the sampler's sigma_max).
    """

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    mean_fraction: float = 0.0
    sigma_mean: float = 5.0

    @classmethod
    def for_sigma_data(cls, sigma_data: float, **kwargs: float) -> EDMLoss:
        """EDM's noise-level distribution rescaled to a target of spread ``sigma_data``.

        EDM's P_mean = -1.2 is tuned for sigma_data = 0.5: ln(sigma) is centred on
        ln(0.5) - 0.51. Keeping sigma / sigma_data distributed alike for another spread (the
        residual targets, sigma_data about 0.1-0.2) shifts P_mean by ln(sigma_data / 0.5).
        """
        return cls(P_mean=-1.2 + math.log(sigma_data / 0.5), sigma_data=sigma_data, **kwargs)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.P_mean) and math.isfinite(self.P_std) and self.P_std > 0):
            raise ValueError(f"need a finite P_mean and P_std > 0, got {self.P_mean}, {self.P_std}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")
        if not (0.0 <= self.mean_fraction < 1.0 and self.sigma_mean > 0):
            raise ValueError("need 0 <= mean_fraction < 1 and sigma_mean > 0")

    def weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1).

        Args:
            sigma: noise levels > 0, any shape.

        Returns:
            Weights shaped like ``sigma``; they make the effective network target unit-variance.
        """
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(
        self,
        denoiser: ConditionalDenoiser[C],
        y: Tensor,
        cond: C,
        *,
        generator: torch.Generator,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Draw sigma and n for each item, denoise y + n and return the weighted squared error.

        ln(sigma) ~ N(P_mean, P_std^2) per batch item and n ~ N(0, sigma^2 I), both from
        ``generator`` on its own device (then moved to ``y``'s), so a CPU generator gives the
        same draws whatever device trains. Invalid pixels of ``y`` are set to 0 before noising,
        so whatever they hold (even NaN) reaches neither the network nor the loss.

        Args:
            denoiser: D(x; sigma, cond) returning the clean-image estimate.
            y: (B, C, H, W) clean target in model space ([-1, 1]).
            cond: the conditions, passed to ``denoiser`` unchanged.
            generator: the only source of randomness.
            valid: (B, 1, H, W) bool, True where ``y`` has data; None means all valid.

        Returns:
            (B, C, H, W) float32 per-pixel loss, 0 at invalid pixels; reduce with
            ``masked_mean``.
        """
        b = y.shape[0]
        if valid is not None:
            if valid.dtype != torch.bool or valid.shape != (b, 1, *y.shape[2:]):
                raise ValueError(
                    f"valid must be bool (B, 1, H, W) for y {tuple(y.shape)}, "
                    f"got {valid.dtype} {tuple(valid.shape)}"
                )
            y = torch.where(valid, y, torch.zeros_like(y))
        draw_device = generator.device
        rnd_normal = torch.randn((b,), generator=generator, device=draw_device)  # (B,)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp().to(y.device)  # (B,)
        eps = torch.randn(tuple(y.shape), generator=generator, device=draw_device)  # (B, C, H, W)
        n = eps.to(y.device) * sigma[:, None, None, None]  # (B, C, H, W) n ~ N(0, sigma^2 I)
        x = y + n
        if self.mean_fraction > 0:
            chosen = torch.rand((b,), generator=generator, device=draw_device).to(y.device)
            chosen = chosen < self.mean_fraction  # (B,)
            sigma = torch.where(chosen, torch.full_like(sigma, self.sigma_mean), sigma)
            x = torch.where(chosen[:, None, None, None], torch.zeros_like(x), x)
        denoised = denoiser(x, sigma, cond)  # (B, C, H, W)
        loss = self.weight(sigma)[:, None, None, None] * (denoised - y) ** 2  # (B, C, H, W)
        if valid is not None:
            loss = torch.where(valid, loss, torch.zeros_like(loss))
        return loss
