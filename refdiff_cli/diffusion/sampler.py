"""EDM noise schedule and sampler (Karras et al., NeurIPS 2022, Eq. 5 and Algorithm 2).

``karras_sigmas`` is the time-step discretisation (Eq. 5), ``initial_state`` Algorithm 2's
line 2 (with Ref-Diff's "lr" and "mean" starts) and ``edm_sampler`` the rest of Algorithm 2:
Heun, or Euler, which leaves out lines 9-11 (one Euler step from the "mean" start is the
one-step sampler of exported models). ``sample`` runs what a ``SamplerConfig`` describes.
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

from refdiff_cli.config import SamplerConfig, SamplerName, StartName

#: D(x; sigma): x (B, C, H, W) float32 and sigma (B,) float32 -> (B, C, H, W) float32.
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: Standard normal noise shaped like the state for draw index i >= 0 (0 = start state).
NoiseFn = Callable[[int], Tensor]
#: Progress after every network evaluation: (evaluations done, evaluations in total).
ProgressFn = Callable[[int, int], None]
#: D(x; t) as Algorithm 2 uses it: the state (float64) and the level as a float.
_StateDenoiser = Callable[[Tensor, float], Tensor]


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
    """Return the start x_0 of the chain at noise level sigma_max (Algorithm 2, line 2).

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


def _levels(sigmas: Tensor) -> list[float]:
    """The noise levels t_0 > ... > t_N >= 0 of a schedule as Python floats, after checks."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()) or not bool((sigmas[-1] >= 0).all()):
        raise ValueError("sigmas must be strictly decreasing and end at a level >= 0")
    return [float(s) for s in sigmas.to(torch.float64).cpu()]


def _network(denoise: Denoiser, total: int, callback: ProgressFn | None) -> _StateDenoiser:
    """D(x; t) for the state: run in float32, returned in the state's dtype, progress reported."""
    done = 0

    def evaluate(x: Tensor, t: float) -> Tensor:
        nonlocal done
        sigma = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)  # (B,)
        denoised = denoise(x.to(torch.float32), sigma)
        if denoised.shape != x.shape:
            raise ValueError(f"denoiser returned {tuple(denoised.shape)} for x {tuple(x.shape)}")
        done += 1
        if callback is not None:
            callback(done, total)
        return denoised.to(x.dtype)

    return evaluate


def _draw(noise: NoiseFn, index: int, like: Tensor) -> Tensor:
    """Return draw ``index`` of the noise like ``like`` (device, dtype) after a shape check."""
    eps = noise(index)
    if eps.shape != like.shape:
        raise ValueError(f"noise draw {index} is {tuple(eps.shape)}, expected {tuple(like.shape)}")
    return eps.to(device=like.device, dtype=like.dtype)


def edm_sampler(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseFn,
    solver: SamplerName = "heun",
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    callback: ProgressFn | None = None,
) -> Tensor:
    """EDM's stochastic sampler (Algorithm 2): Heun, or Euler, which leaves out lines 9-11.

    Args:
        denoise: the denoiser D(x; sigma); it must treat batch items independently for the
            result to be independent of the batch composition.
        x: (B, C, H, W) start state x_0 at noise level sigmas[0] (see ``initial_state``).
        sigmas: (N + 1,) strictly decreasing noise levels t_i, usually ``karras_sigmas``.
        noise: standard normal noise shaped like ``x``; step i uses draw i + 1 and is only
            called on steps with churn (gamma_i > 0).
        solver: "heun" (2 evaluations per step, 1 where t_{i+1} = 0) or "euler" (1 per step).
        S_churn: total churn; gamma_i = min(S_churn / N, sqrt(2) - 1). 0 gives the ODE solver.
        S_min, S_max: churn only where S_min <= t_i <= S_max.
        S_noise: standard deviation of the churn noise (slightly above 1 offsets the denoiser's
            tendency to remove too much noise).
        callback: called after every network evaluation with (done, total).

    Returns:
        (B, C, H, W) float32 sample x_N.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"unknown solver {solver!r}; use 'heun' or 'euler'")
    t = _levels(sigmas)
    N = len(t) - 1
    corrections = sum(1 for t_next in t[1:] if t_next > 0) if solver == "heun" else 0
    D = _network(denoise, N + corrections, callback)
    gamma_max = min(S_churn / N, math.sqrt(2.0) - 1.0)  # Alg. 2's gamma_i where churn applies
    # Alg. 2 line 2: x_0 (drawn by initial_state), float64 as in EDM (MPS has no float64).
    x_next = x.to(torch.float32 if x.device.type == "mps" else torch.float64)  # (B, C, H, W)
    for i in range(N):  # Alg. 2 line 3
        t_cur, t_next, x_cur = t[i], t[i + 1], x_next
        gamma = gamma_max if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur  # Alg. 2 line 5: t_hat = t_i + gamma_i t_i
        x_hat = x_cur
        if t_hat > t_cur:  # Alg. 2 lines 4, 6 with churn: eps_i ~ N(0, S_noise^2 I)
            eps = S_noise * _draw(noise, i + 1, x_cur)
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * eps  # x_i + sqrt(..) eps_i
        d_cur = (x_hat - D(x_hat, t_hat)) / t_hat  # Alg. 2 line 7: d_i
        x_next = x_hat + (t_next - t_hat) * d_cur  # Alg. 2 line 8: Euler step t_hat -> t_{i+1}
        if solver == "heun" and t_next > 0:  # Alg. 2 line 9 (Heun only)
            d_prime = (x_next - D(x_next, t_next)) / t_next  # Alg. 2 line 10: d'_i
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)  # Alg. 2 line 11
    return x_next.to(torch.float32)  # Alg. 2 line 12: x_N


def sample(
    config: SamplerConfig,
    denoise: Denoiser,
    x_T: Tensor,
    *,
    noise: NoiseFn,
    callback: ProgressFn | None = None,
) -> Tensor:
    """Run ``edm_sampler`` with the solver and churn of ``config`` on its Karras schedule.

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
    return edm_sampler(
        denoise,
        x_T,
        sigmas,
        noise=noise,
        solver=config.sampler,
        S_churn=config.S_churn,
        S_min=config.S_min,
        S_max=config.S_max,
        S_noise=config.S_noise,
        callback=callback,
    )
