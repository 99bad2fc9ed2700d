"""What training measures and publishes: the per-item EDM loss, validation and the model card."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from refdiff_cli import __version__
from refdiff_cli.config import SamplerConfig, StartName, to_dict
from refdiff_cli.data.degrade import make_lr
from refdiff_cli.data.resample import UpsampleMode
from refdiff_cli.datasets.chips import ChipDataset, TrainBatch
from refdiff_cli.diffusion.loss import EDMLoss, masked_mean
from refdiff_cli.diffusion.sampler import initial_state, sample
from refdiff_cli.errors import ConfigError
from refdiff_cli.metrics.pixel import psnr
from refdiff_cli.metrics.scores import PSNR_CAP_DB
from refdiff_cli.model.card import ModelCard
from refdiff_cli.model.network_config import NetworkConfig
from refdiff_cli.model.precond import (
    Conditioning,
    EDMPrecond,
    Prepared,
    diffusion_target,
    image_from_target,
    prepare_conditions,
)
from refdiff_cli.reference.guided import GuidedConfig
from refdiff_cli.train.options import TrainConfig
from refdiff_cli.train.state import generator_for

#: The one LR_up interpolation of training and inference (recorded in the card).
LR_UPSAMPLE: UpsampleMode = "bicubic"
#: Noise levels of the validation loss (model units; EDM's training density peaks near 0.3).
VAL_SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
#: Model space spans [-1, 1]: PSNR peak-to-peak range.
DATA_RANGE = 2.0


def card_sampler(config: TrainConfig) -> SamplerConfig:
    """Default sampler of an exported model: one deterministic Euler step from sigma_mean.

    A single step from a large noise level is the model's estimate of the conditional mean
    (the highest-PSNR output); the project measured many-step Heun from sigma 80 below
    bicubic for CPU-sized models. Runs that trained the "mean" start (``mean_fraction`` > 0)
    start from 0 and draw no noise at all; others start from noise as they were trained.
    """
    start: StartName = "mean" if config.mean_fraction > 0 else "noise"
    return SamplerConfig(sampler="euler", steps=1, sigma_max=config.sigma_mean, start=start)


def guided_config(config: TrainConfig) -> GuidedConfig:
    """The guided transfer of a run: ``GuidedConfig`` with the run's overrides."""
    try:
        return GuidedConfig(**config.guided)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"guided settings {config.guided} are invalid: {exc}") from exc


def training_loss(config: TrainConfig) -> EDMLoss:
    """The EDM loss of a run: noise levels scaled to the target's sigma_data, mean items."""
    return EDMLoss.for_sigma_data(
        config.target_sigma_data,
        mean_fraction=config.mean_fraction,
        sigma_mean=config.sigma_mean,
    )


#: D(x; sigma, cond) -> D_x, as the training loop calls the (possibly DDP-wrapped) model.
Denoise = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


def edm_loss_per_item(
    loss_fn: EDMLoss,
    denoise: Denoise,
    y: torch.Tensor,
    cond: Conditioning,
    generators: Sequence[torch.Generator],
    valid: torch.Tensor,
) -> torch.Tensor:
    """``loss_fn`` where item i draws sigma and noise from ``generators[i]``; ONE network call.

    ``EDMLoss`` draws from one generator for the whole batch, so splitting a global batch
    over processes would change every draw. Here item i first runs ``loss_fn`` with a
    recording denoiser (which keeps the noisy input and sigma), the whole batch then goes
    through the network once, and each item replays ``loss_fn`` from the same generator
    state, reading its slice of the output. The loss formula stays ``EDMLoss``'s alone.

    Args:
        loss_fn: the EDM loss.
        denoise: D(x; sigma, cond) over the batch.
        y: (B, C, H, W) clean targets in [-1, 1].
        cond: the batch's conditions.
        generators: one CPU generator per item (their states are restored after the replay).
        valid: (B, 1, H, W) bool, True where ``y`` has data.

    Returns:
        (B, C, H, W) per-pixel loss, 0 at invalid pixels.
    """
    states = [g.get_state() for g in generators]
    noisy: list[torch.Tensor] = []
    sigmas: list[torch.Tensor] = []

    def record(x: torch.Tensor, sigma: torch.Tensor, _: None) -> torch.Tensor:
        noisy.append(x)
        sigmas.append(sigma)
        return x

    for i, gen in enumerate(generators):
        loss_fn(record, y[i : i + 1], None, generator=gen, valid=valid[i : i + 1])
    D_x = denoise(torch.cat(noisy), torch.cat(sigmas), cond)  # (B, C, H, W)
    losses = []
    for i, (gen, state) in enumerate(zip(generators, states, strict=True)):
        gen.set_state(state)
        item = D_x[i : i + 1]

        def replay(x: torch.Tensor, sigma: torch.Tensor, _: None, out: torch.Tensor = item) -> Any:
            return out

        losses.append(loss_fn(replay, y[i : i + 1], None, generator=gen, valid=valid[i : i + 1]))
    return torch.cat(losses)  # (B, C, H, W)


def make_training_lr(
    hr: torch.Tensor,
    stored: torch.Tensor | None,
    *,
    method: str,
    scale: int,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """The LR of a batch: the stored crops, or ``make_lr`` of the HR with one generator per item.

    Returns:
        (B, C, H/scale, W/scale) in [-1, 1] on ``hr``'s device.
    """
    if method == "stored":
        if stored is None:
            raise ValueError("lr_method 'stored' needs chips that carry LR images")
        return stored.to(hr.device)
    if method == "bicubic":
        return make_lr(hr, scale, "bicubic")
    if method == "mixed":
        items = [
            make_lr(hr[i : i + 1], scale, "area" if area else "bicubic")
            for i, area in enumerate(coin_flips(generators))
        ]
    else:
        items = [
            make_lr(hr[i : i + 1], scale, "realistic", generator=g)
            for i, g in enumerate(generators)
        ]
    return torch.cat(items)  # (B, C, H/scale, W/scale)


def batch_conditions(
    batch: TrainBatch,
    hr: torch.Tensor,
    config: TrainConfig,
    generators: Sequence[torch.Generator],
    guided: GuidedConfig,
) -> Prepared:
    """The network conditions of a batch of chips, made the same way in training and validation.

    The LR is ``make_training_lr`` of ``hr`` (one generator per item); the reference, mask and
    reference validity move to ``hr``'s device; ``prepare_conditions`` applies the run's
    reference recipe with the LR upsampling exported models use.
    """
    device = hr.device
    lr = make_training_lr(
        hr, batch.lr, method=config.lr_method, scale=config.scale, generators=generators
    )
    return prepare_conditions(
        lr=lr,
        ref=batch.ref.to(device),
        mask=batch.mask.to(device),
        ref_valid=batch.ref_valid.to(device),
        scale=config.scale,
        reference=config.reference,
        upsample_mode=LR_UPSAMPLE,
        guided_config=guided,
    )


def coin_flips(generators: Sequence[torch.Generator]) -> list[bool]:
    """One fair coin per item, drawn from the item's own generator."""
    return [bool(torch.rand((), generator=g) < 0.5) for g in generators]


def center_crops(
    dataset: ChipDataset, indices: Sequence[int], *, crop_px: int, scale: int
) -> TrainBatch:
    """Centred crops (offsets multiples of ``scale``, no transform): the fixed validation view."""
    off = (dataset.chip_px - crop_px) // 2 // scale * scale
    window = (slice(None), slice(off, off + crop_px), slice(off, off + crop_px))
    t, o = crop_px // scale, off // scale
    chips = [dataset.chip(i) for i in indices]
    names = ("hr", "ref", "mask", "hr_valid", "ref_valid")
    crops = {name: [getattr(c, name)[window] for c in chips] for name in names}
    crops["lr"] = [c.lr[:, o : o + t, o : o + t] for c in chips if c.lr is not None]
    return TrainBatch.stacked(crops)


@torch.no_grad()
def validate(
    denoiser: EDMPrecond,
    dataset: ChipDataset,
    config: TrainConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Score the (EMA) denoiser on the first ``config.val_chips`` validation chips.

    Every draw is fixed by (seed, chip index), so scores of different steps are comparable:
    the loss at each of ``VAL_SIGMAS`` with fixed noise, and the PSNR (dB, model space,
    valid HR pixels) of the exported card's sampler (``card_sampler``), of LR_up and of the
    base the residual is relative to (the guided estimate for reference "guided").
    """
    n = min(config.val_chips, len(dataset))
    loss_fn = training_loss(config)
    sampler = card_sampler(config)
    losses = {s: 0.0 for s in VAL_SIGMAS}
    psnr_sample: list[float] = []
    psnr_lr_up: list[float] = []
    psnr_base: list[float] = []
    chunk = max(1, config.batch_size // len(VAL_SIGMAS))  # at most a batch per call
    was_training = denoiser.training
    denoiser.eval()
    for start in range(0, n, chunk):
        ids = list(range(start, min(n, start + chunk)))
        crops = center_crops(dataset, ids, crop_px=config.crop_px, scale=config.scale)
        hr, valid = crops.hr.to(device), crops.hr_valid.to(device)
        gens = [generator_for("val-lr", config.seed, i) for i in ids]
        prepared = batch_conditions(crops, hr, config, gens, guided_config(config))
        cond, lr_up, base = prepared.cond, prepared.cond.lr_up, prepared.base
        y = torch.where(valid, diffusion_target(hr, base, config.target), torch.zeros_like(hr))
        eps = torch.cat([_normal(hr[:1], "val-noise", config.seed, i) for i in ids]).to(device)
        # All noise levels in one network call: item j * b + i is chip i at VAL_SIGMAS[j].
        k, b = len(VAL_SIGMAS), len(ids)
        sig = torch.tensor(VAL_SIGMAS, device=device).repeat_interleave(b)  # (k b,)
        y_k = y.repeat(k, 1, 1, 1)  # (k b, C, c, c)
        x = y_k + sig[:, None, None, None] * eps.repeat(k, 1, 1, 1)
        cond_k = Conditioning(
            lr_up=cond.lr_up.repeat(k, 1, 1, 1),
            ref=cond.ref.repeat(k, 1, 1, 1),
            mask=cond.mask.repeat(k, 1, 1, 1),
        )
        D_x = denoiser(x, sig, cond_k, dtype=dtype)  # (k b, C, c, c)
        err = loss_fn.weight(sig)[:, None, None, None] * (D_x - y_k) ** 2
        for j, sigma in enumerate(VAL_SIGMAS):
            losses[sigma] += float(masked_mean(err[j * b : (j + 1) * b], valid)) * b / n
        noise0 = torch.cat([_normal(hr[:1], "val-sample", config.seed, i) for i in ids])
        x_T = initial_state(sampler.start, sampler.sigma_max, noise0.to(device), lr_up)

        def denoise(x: torch.Tensor, sigma: torch.Tensor, c: Conditioning = cond) -> torch.Tensor:
            D_x: torch.Tensor = denoiser(x, sigma, c, dtype=dtype)
            return D_x

        zeros = torch.zeros_like(x_T)

        def no_noise(_: int, z: torch.Tensor = zeros) -> torch.Tensor:
            return z  # churn 0: the sampler never draws noise

        out = image_from_target(sample(sampler, denoise, x_T, noise=no_noise), base, config.target)
        for k in range(len(ids)):
            region = valid[k, 0].cpu().numpy()
            target = hr[k].cpu().numpy()
            pairs = ((psnr_sample, out[k]), (psnr_lr_up, lr_up[k]), (psnr_base, base[k]))
            for scores, image in pairs:
                value = psnr(image.cpu().numpy(), target, data_range=DATA_RANGE, region=region)
                scores.append(min(value, PSNR_CAP_DB) if not math.isnan(value) else math.nan)
    denoiser.train(was_training)
    return {
        "chips": n,
        "val_loss": {f"{s:g}": losses[s] for s in VAL_SIGMAS},
        "val_loss_mean": sum(losses.values()) / len(losses),
        "psnr_sample": _nanmean(psnr_sample),
        "psnr_lr_up": _nanmean(psnr_lr_up),
        "psnr_base": _nanmean(psnr_base),
    }


def _normal(like: torch.Tensor, *parts: int | str) -> torch.Tensor:
    """Standard normal noise shaped like one item of ``like``, a pure function of ``parts``."""
    return torch.randn(tuple(like.shape), generator=generator_for(*parts))  # (1, C, H, W)


def _nanmean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def default_tiling(network: NetworkConfig, *, scale: int, crop_px: int) -> tuple[int, int, int]:
    """Inference tile, overlap and blend margin (output pixels) for an exported model.

    The tile is at least the training crop; with attention, 256 px where it stays at <= 64 x
    64 positions (tiny: 128 px); without, 512 px (the cost per pixel does not grow with the
    tile, and the overlap's share of it shrinks: ``benchmarks/throughput.py``). It is a
    multiple of the scale and of the network's size multiple. The margin is 2 LR pixels (2 x
    scale, at least 16 px): the reach of the bicubic LR_up into the replicate-padded tile edge
    plus the convs' zero padding. The overlap is 4 margins (a cosine ramp as wide as 2
    margins), with attention at least a quarter tile. For the small preset at x8 this gives
    tile 256, overlap 64, margin 16; without its middle attention, tile 512.
    """
    multiple = math.lcm(scale, network.size_multiple)
    attention = network.middle_attention or bool(network.attention_levels)
    tile = max(crop_px, min(256, 64 * network.size_multiple) if attention else 512)
    tile = -(-tile // multiple) * multiple
    margin = max(2 * scale, 16)
    overlap = min(max(4 * margin, tile // 4 if attention else 0), tile // 2)
    overlap = overlap // scale * scale
    margin = min(margin, (overlap - 1) // 2)
    return tile, overlap, margin


def build_card(
    *,
    config: TrainConfig,
    network: NetworkConfig,
    manifest: dict[str, Any],
    fingerprint: str,
    step: int,
    validation: dict[str, Any] | None,
    init_sha256: str | None = None,
) -> ModelCard:
    """The model card of the exported EMA weights, with the training provenance.

    ``init_sha256`` is the sha256 of the model the run started from (``init_from``).
    """
    tile, overlap, margin = default_tiling(network, scale=config.scale, crop_px=config.crop_px)
    licence_keys = ("name", "license", "licence", "attribution", "split")
    sources = [
        {k: s[k] for k in licence_keys if k in s}
        for s in manifest["sources"]
        if isinstance(s, dict)
    ]
    training = {
        "chips_fingerprint": fingerprint,
        "sources": sources,
        "steps": step,
        "images_seen": step * config.batch_size,
        "seed": config.seed,
        "lr_method": config.lr_method,
        "init_from_sha256": init_sha256,
        "validation": validation,
        "config": to_dict(config),
    }
    return ModelCard(
        name=f"refdiff-{config.preset}-x{config.scale}",
        preset=config.preset,
        network=network.to_dict(),
        scale=config.scale,
        bands=tuple(manifest["bands"]),
        normalization=manifest["normalization"],
        mask_encoding=manifest["mask_encoding"],
        lr_upsample=LR_UPSAMPLE,
        train_tile_px=config.crop_px,
        tile_px=tile,
        overlap_px=overlap,
        margin_px=margin,
        sigma_data=config.target_sigma_data,
        target=config.target,
        reference=config.reference,
        guided=to_dict(guided_config(config)) if config.reference == "guided" else {},
        sampler=to_dict(card_sampler(config)),
        training=training,
        refdiff_version=__version__,
    )
