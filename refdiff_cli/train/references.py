"""The references a training step sees: the chips' own, synthesised trustworthy ones, or none.

A model learns to trust a reference only if it is shown references that deserve trust. Each
item of a step independently, from its own generator (a pure function of seed, step and the
item's place in the global batch, so resume and torchrun see the same draws):

- with probability ``drop_reference_fraction`` the reference is dropped: the mask says
  "changed" everywhere, so the network also learns a pure LR prior;
- with probability ``synthesize_fraction`` the reference is synthesised from the item's own
  HR crop (``data/synthesize.py``: per-band gain, offset and gamma, optional blur, pasted
  and removed objects marked in the mask), then misregistered by a random sub-pixel shift of
  up to ``MAX_SHIFT_PX`` output pixels and given sensor noise: the nuisances a same-sensor
  reference really has;
- otherwise the chip's real reference is kept (cross-date pairs: the network learns when
  not to trust).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from refdiff_cli.data.synthesize import SynthesisConfig, synthesize_ref
from refdiff_cli.datasets.chips import TrainBatch
from refdiff_cli.errors import ConfigError
from refdiff_cli.reference.guided import shift_image
from refdiff_cli.train.options import TrainConfig
from refdiff_cli.train.state import derive_seed

#: Largest misregistration of a synthesised reference, output pixels (measured range 0.5-2).
MAX_SHIFT_PX = 2.0
#: Share of synthesised references left exactly registered.
REGISTERED_FRACTION = 0.2
#: Largest standard deviation of the reference's sensor noise, model units (0.03 = 3.8 DN).
MAX_NOISE = 0.03


def training_references(
    batch: TrainBatch, config: TrainConfig, step: int, items: list[int]
) -> TrainBatch:
    """Return ``batch`` with each item's reference and mask chosen as the module says.

    Args:
        batch: the step's crops (CPU tensors).
        config: the run's settings (fractions and seed).
        step: the optimizer step.
        items: each item's position in the global batch (keys its generator).
    """
    if config.synthesize_fraction == 0 and config.drop_reference_fraction == 0:
        return batch
    synthesis = synthesis_config(config)
    ref, mask, ref_valid = batch.ref.clone(), batch.mask.clone(), batch.ref_valid.clone()
    for i, position in enumerate(items):
        rng = np.random.default_rng(derive_seed("reference", config.seed, step, position))
        draw = rng.random()
        if draw < config.drop_reference_fraction:
            mask[i] = 1.0
        elif draw < config.drop_reference_fraction + config.synthesize_fraction:
            ref[i], mask[i], ref_valid[i] = synthesised_reference(
                batch.hr[i], batch.hr_valid[i], rng, synthesis
            )
    return dataclasses.replace(batch, ref=ref, mask=mask, ref_valid=ref_valid)


def synthesis_config(config: TrainConfig) -> SynthesisConfig:
    """The synthesised references' ranges: ``SynthesisConfig`` with the run's overrides."""
    try:
        return SynthesisConfig(**config.synthesis)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"synthesis settings {config.synthesis} are invalid: {exc}") from exc


def synthesised_reference(
    hr: torch.Tensor,
    hr_valid: torch.Tensor,
    rng: np.random.Generator,
    config: SynthesisConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A trustworthy reference of one HR crop (C, H, W): its ref, mask (1, H, W), validity."""
    synthesis = synthesize_ref(
        hr.numpy(), hr_valid[0].numpy(), rng=rng, config=config or SynthesisConfig()
    )
    ref = torch.from_numpy(synthesis.ref)[None]  # (1, C, H, W)
    mask = torch.from_numpy(synthesis.mask)[None]  # (1, 1, H, W)
    valid = torch.from_numpy(synthesis.ref_valid)[None, None].float()  # (1, 1, H, W)
    if rng.random() >= REGISTERED_FRACTION:
        radius, angle = rng.uniform(0.0, MAX_SHIFT_PX), rng.uniform(0.0, 2 * math.pi)
        shift = torch.tensor([[radius * math.sin(angle), radius * math.cos(angle)]])
        ref = shift_image(ref, shift.float())
        mask = (shift_image(mask, shift.float()) > 0.5).float()
        valid = shift_image(valid, shift.float())
    noise = rng.uniform(0.0, MAX_NOISE) * rng.standard_normal(ref.shape)
    ref = (ref + torch.from_numpy(noise).float()).clamp(-1.0, 1.0)
    return ref[0], mask[0], valid[0] > 0.5
