"""EDM noise schedule and samplers (Karras et al., NeurIPS 2022, Eq. 5 and Algorithm 2).

The loop state is kept in float64 as in the EDM reference sampler (float32 on Apple MPS, which
has no float64); the denoiser sees float32.
All randomness comes from the ``noise`` callable, so a sample is a pure function of the start
state, the denoiser and the noise: draw 0 belongs to the start state (``initial_state``) and
step ``i`` (0-based) takes draw ``i + 1``, whatever the batch size or the tile order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from refdiff_cli.config import SamplerConfig, StartName

#: D(x; sigma): x (B, C, H, W) float32 and sigma (B,) float32 -> (B, C, H, W) float32.
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: Standard normal noise shaped like the state for draw index i >= 0 (0 = start state).
NoiseFn = Callable[[int], Tensor]
#: Progress after every network evaluation: (evaluations done, evaluations in total).
ProgressFn = Callable[[int, int], None]
#: A sampler: (denoise, x, sigmas, *, noise, S_churn, S_min, S_max, S_noise, callback) -> x_0.
Sampler = Callable[..., Tensor]


def karras_sigmas(
    steps: int,
    *,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    device: torch.device | str | None = None,
) -> Tensor:
    """Return the EDM noise levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0 (EDM Eq. 5).

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i < N, with sigma_0 = sigma_max and sigma_{N-1} = sigma_min exactly; N = 1 gives
    [sigma_max, 0].

    Args:
        steps: number of noise levels N >= 1 (the sampler takes N steps).
        sigma_min: smallest non-zero noise level, 0 < sigma_min < sigma_max (model units).
        sigma_max: largest noise level (model units).
        rho: schedule curvature > 0 (7 in EDM; larger spends more steps at low sigma).
        device: where to create the tensor (default: CPU).

    Returns:
        (steps + 1,) float64 tensor, strictly decreasing, last entry 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min ({sigma_min}) < sigma_max ({sigma_max}) < inf")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64, device=device)  # (N,) i/(N-1)
    inv_max = sigma_max ** (1.0 / rho)
    inv_min = sigma_min ** (1.0 / rho)
    levels = (inv_max + ramp * (inv_min - inv_max)) ** rho  # (N,) Eq. 5
    levels[0] = sigma_max
    if steps > 1:
        levels[-1] = sigma_min
    return torch.cat([levels, levels.new_zeros(1)])  # (N + 1,) sigma_N = 0


def initial_state(start: StartName, sigma_max: float, noise0: Tensor, lr_up: Tensor) -> Tensor:
    """Return the start x_0 of the chain at noise level sigma_max (Algorithm 2, line 1).

    Args:
        start: "noise" for sigma_max * n with n ~ N(0, I) as in EDM; "lr" for
            sigma_max * LR_up as the public Ref-Diff release does; "mean" for 0, the mean of
            the noise distribution (the first step evaluates D(0; sigma_max)).
        sigma_max: first noise level of the schedule (model units).
        noise0: (B, C, H, W) standard normal noise, draw 0 of the run's noise field.
        lr_up: (B, C, H, W) LR upsampled to the output size, in model space [-1, 1].

    Returns:
        (B, C, H, W) tensor in the dtype of the chosen source.
    """
    if noise0.shape != lr_up.shape:
        raise ValueError(f"noise0 {tuple(noise0.shape)} and lr_up {tuple(lr_up.shape)} differ")
    if start == "noise":
        return sigma_max * noise0
    if start == "lr":
        return sigma_max * lr_up
    if start == "mean":
        return torch.zeros_like(noise0)
    raise ValueError(f"unknown start {start!r}; use 'noise', 'lr' or 'mean'")


def _check_sigmas(sigmas: Tensor) -> int:
    """Validate a schedule and return its number of steps N."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()) or not bool((sigmas[-1] >= 0).all()):
        raise ValueError("sigmas must be strictly decreasing and end at a level >= 0")
    return sigmas.numel() - 1


def _state_dtype(device: torch.device) -> torch.dtype:
    """float64 for the loop state, as in EDM, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _evaluate(denoise: Denoiser, x: Tensor, sigma: float) -> Tensor:
    """Run the denoiser in float32 on the state and return D(x; sigma) in the state's dtype."""
    x32 = x.to(torch.float32)  # (B, C, H, W)
    sigma32 = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)  # (B,)
    denoised = denoise(x32, sigma32)
    if denoised.shape != x.shape:
        raise ValueError(f"denoiser returned {tuple(denoised.shape)} for x {tuple(x.shape)}")
    return denoised.to(x.dtype)


def _draw(noise: NoiseFn, index: int, like: Tensor) -> Tensor:
    """Return draw ``index`` of the noise like ``like`` (device, dtype) after a shape check."""
    eps = noise(index)
    if eps.shape != like.shape:
        raise ValueError(f"noise draw {index} is {tuple(eps.shape)}, expected {tuple(like.shape)}")
    return eps.to(device=like.device, dtype=like.dtype)


def _run(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseFn,
    S_churn: float,
    S_min: float,
    S_max: float,
    S_noise: float,
    callback: ProgressFn | None,
    second_order: bool,
) -> Tensor:
    """EDM Algorithm 2, with the 2nd-order correction (Heun) or without it (Euler)."""
    steps = _check_sigmas(sigmas)
    levels = [float(s) for s in sigmas.to(torch.float64).cpu()]
    corrections = sum(1 for s in levels[1:] if s > 0) if second_order else 0
    total = steps + corrections
    done = 0

    def evaluated() -> None:
        nonlocal done
        done += 1
        if callback is not None:
            callback(done, total)

    # Line 2: gamma_i = min(S_churn / N, sqrt(2) - 1) if t_i in [S_min, S_max], else 0.
    gamma_max = min(S_churn / steps, math.sqrt(2.0) - 1.0)
    x_next = x.to(_state_dtype(x.device))  # (B, C, H, W) Line 1: x_0 (made by initial_state)
    for i in range(steps):  # Line 3
        t_cur, t_next = levels[i], levels[i + 1]
        x_cur = x_next
        gamma = gamma_max if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur  # Line 5: t_hat = t_i + gamma_i t_i
        if t_hat > t_cur:
            # Lines 4 and 6: eps ~ N(0, S_noise^2 I); x_hat = x_i + sqrt(t_hat^2 - t_i^2) eps.
            eps = S_noise * _draw(noise, i + 1, x_cur)
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * eps
        else:
            x_hat = x_cur
        denoised = _evaluate(denoise, x_hat, t_hat)
        evaluated()
        d_cur = (x_hat - denoised) / t_hat  # Line 7: d_i = (x_hat - D(x_hat; t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur  # Line 8: Euler step
        if second_order and t_next > 0:  # Line 9: correct unless sigma_{i+1} = 0
            denoised = _evaluate(denoise, x_next, t_next)
            evaluated()
            d_prime = (x_next - denoised) / t_next  # Line 10
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)  # Line 11
    assert done == total
    return x_next.to(torch.float32)


def sample_heun(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseFn,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    callback: ProgressFn | None = None,
) -> Tensor:
    """Stochastic Heun sampler, EDM Algorithm 2 (2 evaluations per step, 1 at the last).

    Args:
        denoise: the denoiser D(x; sigma); it must treat batch items independently for the
            result to be independent of the batch composition.
        x: (B, C, H, W) start state x_0 at noise level sigmas[0] (see ``initial_state``).
        sigmas: (N + 1,) strictly decreasing noise levels, usually ``karras_sigmas``.
        noise: standard normal noise shaped like ``x``; step i uses draw i + 1 and is only
            called on steps with churn (gamma_i > 0).
        S_churn: total churn; gamma_i = min(S_churn / N, sqrt(2) - 1). 0 gives the ODE solver.
        S_min, S_max: churn only where S_min <= sigma_i <= S_max.
        S_noise: standard deviation of the churn noise (slightly above 1 offsets the denoiser's
            tendency to remove too much noise).
        callback: called after every network evaluation with (done, total).

    Returns:
        (B, C, H, W) float32 sample x_N.
    """
    return _run(
        denoise,
        x,
        sigmas,
        noise=noise,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=S_noise,
        callback=callback,
        second_order=True,
    )


def sample_euler(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseFn,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    callback: ProgressFn | None = None,
) -> Tensor:
    """Stochastic Euler sampler: EDM Algorithm 2 without lines 9-11 (1 evaluation per step).

    Arguments and result as in ``sample_heun``.
    """
    return _run(
        denoise,
        x,
        sigmas,
        noise=noise,
        S_churn=S_churn,
        S_min=S_min,
        S_max=S_max,
        S_noise=S_noise,
        callback=callback,
        second_order=False,
    )


#: Samplers by the name used in ``SamplerConfig.sampler``.
SAMPLERS: dict[str, Sampler] = {"heun": sample_heun, "euler": sample_euler}


def sample(
    config: SamplerConfig,
    denoise: Denoiser,
    x_T: Tensor,
    *,
    noise: NoiseFn,
    callback: ProgressFn | None = None,
) -> Tensor:
    """Run the sampler ``config`` names on the Karras schedule it describes.

    Args:
        config: sampler, schedule and churn settings (see ``SamplerConfig``).
        denoise: the denoiser D(x; sigma).
        x_T: (B, C, H, W) start state at sigma_max (see ``initial_state``).
        noise: standard normal noise shaped like ``x_T``; draw i + 1 for step i.
        callback: called after every network evaluation with (done, total); total is
            ``config.network_evaluations``.

    Returns:
        (B, C, H, W) float32 sample.
    """
    sigmas = karras_sigmas(
        config.steps,
        sigma_min=config.sigma_min,
        sigma_max=config.sigma_max,
        rho=config.rho,
    )  # on the CPU: the loop reads the levels as Python floats
    return SAMPLERS[config.sampler](
        denoise,
        x_T,
        sigmas,
        noise=noise,
        S_churn=config.S_churn,
        S_min=config.S_min,
        S_max=config.S_max,
        S_noise=config.S_noise,
        callback=callback,
    )
