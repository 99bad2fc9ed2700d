"""Training references: dropped, synthesised (trustworthy) or real, per item and reproducibly."""

from __future__ import annotations

import dataclasses

import torch

from refdiff_cli.datasets.chips import TrainBatch
from refdiff_cli.train.options import TrainConfig
from refdiff_cli.train.references import training_references


def _batch(n: int = 16, size: int = 64) -> TrainBatch:
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randn(n, 3, size // 8, size // 8, generator=gen)
    hr = torch.tanh(torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear"))
    return TrainBatch(
        hr=hr,
        ref=-hr,  # a "real" reference that is clearly not the HR
        mask=torch.zeros(n, 1, size, size),
        hr_valid=torch.ones(n, 1, size, size, dtype=torch.bool),
        ref_valid=torch.ones(n, 1, size, size, dtype=torch.bool),
        lr=None,
    )


def test_each_item_is_dropped_synthesised_or_kept() -> None:
    batch = _batch()
    config = TrainConfig(synthesize_fraction=0.5, drop_reference_fraction=0.25)
    out = training_references(batch, config, step=3, items=list(range(16)))
    dropped = [bool((out.mask[i] == 1).all()) for i in range(16)]
    kept = [torch.equal(out.ref[i], batch.ref[i]) and not dropped[i] for i in range(16)]
    synthesised = [not (d or k) for d, k in zip(dropped, kept, strict=True)]
    assert any(dropped) and any(kept) and any(synthesised)
    for i in range(16):
        if synthesised[i]:
            # Close to the HR where unmarked (colour shift, blur, shift, noise): a trustworthy
            # reference, unlike the real one here.
            unchanged = out.mask[i, 0] < 0.5
            error = (out.ref[i] - batch.hr[i]).abs()[:, unchanged].mean()
            assert float(error) < 0.5 < float((batch.ref[i] - batch.hr[i]).abs().mean())
    again = training_references(batch, config, step=3, items=list(range(16)))
    assert torch.equal(again.ref, out.ref) and torch.equal(again.mask, out.mask)
    other_step = training_references(batch, config, step=4, items=list(range(16)))
    assert not torch.equal(other_step.ref, out.ref)


def test_no_fractions_leave_the_batch_alone() -> None:
    batch = _batch(n=2)
    assert training_references(batch, TrainConfig(), step=0, items=[0, 1]) is batch
    config = dataclasses.replace(TrainConfig(), drop_reference_fraction=1.0)
    out = training_references(batch, config, step=0, items=[0, 1])
    assert bool((out.mask == 1).all()) and torch.equal(out.ref, batch.ref)
