"""Band routing: which LR band the engine generates, and how every other band is upscaled.

Every selected LR band is written. The engine's own bands (for the model: red, green and
blue, in that order) go through the engine; each other band goes through the ``guided``
reference transfer, on its own, with the shift registered on the engine's bands (one
registration for the whole tile), when the reference has a matching band; else bicubic.

How the bands are found:
- **Red, green, blue**: ``--rgb R,G,B`` (1-based LR band indexes); else the colour
  interpretation of the selected LR bands; else their descriptions (``red``/``green``/
  ``blue``, or Sentinel-2/Landsat 8 names ``B04``/``B03``/``B02``, any case).
- **Reference band of an LR band** (``band_pairing.pair_reference_bands``): ``--ref-bidx``, one per
  LR band, 0 for none; else the same index when ``-b`` was given and the reference has it;
  else by name when both rasters name all their bands; else in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from refdiff_cli.data.resample import upsample
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo.band_names import RGB
from refdiff_cli.reference.guided import guided_transfer, reference_shift
from refdiff_cli.upscale.engines import Engine, EngineBatch


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BandRoutes:
    """Where each selected LR band goes. Positions are 0-based in the LR band selection
    and in the reference bands read.

    Attributes:
        core: LR positions the engine generates, in the engine's band order.
        core_ref: the reference position of each core band, None where the reference has no
            such band (only for engines that do not use the reference).
        transfer: (LR position, reference position) of other bands sent through ``guided``.
        bicubic: LR positions of other bands without a reference band: upsampled bicubic.
    """

    core: tuple[int, ...]
    core_ref: tuple[int | None, ...]
    transfer: tuple[tuple[int, int], ...] = ()
    bicubic: tuple[int, ...] = ()

    @property
    def bands(self) -> int:
        """Number of output bands."""
        return len(self.core) + len(self.transfer) + len(self.bicubic)

    @property
    def is_direct(self) -> bool:
        """True when the engine takes every band as it comes (no routing needed)."""
        everything = tuple(range(len(self.core)))
        return not (self.transfer or self.bicubic) and self.core == everything

    @property
    def compared(self) -> tuple[tuple[int, int], ...]:
        """(LR position, reference position) of the core bands that have a reference band:
        what the change estimate compares."""
        return tuple((i, r) for i, r in zip(self.core, self.core_ref, strict=True) if r is not None)

    def paths(
        self, engine: Engine, lr_bands: Sequence[int], ref_bands: Sequence[int]
    ) -> list[dict[str, Any]]:
        """Per output band, in output order: its LR band, path and reference band (1-based;
        None where no reference band shaped it)."""
        rows: dict[int, dict[str, Any]] = {}
        for lr_pos, ref_pos in zip(self.core, self.core_ref, strict=True):
            used = None if ref_pos is None or not engine.uses_reference else ref_bands[ref_pos]
            rows[lr_pos] = {"path": engine.name, "ref_band": used}
        for lr_pos, ref_pos in self.transfer:
            rows[lr_pos] = {"path": "guided", "ref_band": ref_bands[ref_pos]}
        for lr_pos in self.bicubic:
            rows[lr_pos] = {"path": "bicubic", "ref_band": None}
        return [{"band": i + 1, "lr_band": lr_bands[i], **rows[i]} for i in range(self.bands)]


def find_rgb(
    names: Sequence[str | None], lr_bands: Sequence[int], rgb: Sequence[int] | None, lr_path: Path
) -> tuple[int, ...] | None:
    """Positions (in the LR selection) of red, green and blue, or None when not found.

    Args:
        names: canonical names (``band_name``) of the selected LR bands.
        lr_bands: the selected LR bands, 1-based.
        rgb: ``--rgb`` (validated by ``UpscaleOptions``): 1-based LR band indexes of red,
            green, blue; None to find them.
        lr_path: the LR file, for messages.
    """
    if rgb is not None:  # three different bands: ``UpscaleOptions`` checked that
        missing = [b for b in rgb if b not in lr_bands]
        if missing:
            raise ConfigError(
                f"--rgb band(s) {', '.join(map(str, missing))} are not among the LR bands used "
                f"from {lr_path} ({', '.join(map(str, lr_bands))})",
                hint="name bands that exist and that -b selects",
            )
        return tuple(lr_bands.index(b) for b in rgb)
    positions = [[i for i, name in enumerate(names) if name == colour] for colour in RGB]
    if all(len(found) == 1 for found in positions):
        return tuple(found[0] for found in positions)
    return None


def route_bands(
    *,
    names: Sequence[str | None],
    lr_bands: Sequence[int],
    ref_of_lr: Sequence[int | None],
    rgb: Sequence[int] | None,
    engine: Engine,
    lr_path: Path,
    ref_path: Path,
) -> BandRoutes:
    """Decide each band's path (module docstring).

    The model generates red, green and blue (or the only three bands). The guided engine
    registers and fits red, green and blue together when it finds them all with reference
    bands, else every band that has a reference band. An engine that does not use the
    reference takes every band.

    Args:
        names: canonical names of the selected LR bands.
        lr_bands: the selected LR bands, 1-based.
        ref_of_lr: per LR position, the position of its reference band among those read, or
            None where the reference has no such band.
        rgb: ``--rgb`` or None.
        engine: the engine (its ``bands``, ``uses_reference`` and ``name``).
        lr_path, ref_path: the inputs, for messages.

    Raises:
        ConfigError: a bad ``--rgb``.
        InputError: the model's bands cannot be found, or the reference lacks one of them.
    """
    everything = tuple(range(len(lr_bands)))
    found = find_rgb(names, lr_bands, rgb, lr_path)
    if not engine.uses_reference:
        return BandRoutes(core=everything, core_ref=tuple(ref_of_lr))
    if engine.bands is None:  # the guided engine: any bands
        if found is None or any(ref_of_lr[i] is None for i in found):
            found = tuple(i for i in everything if ref_of_lr[i] is not None)
    elif found is None:
        if len(lr_bands) != engine.bands:
            raise InputError(
                f"LR {lr_path} gives {len(lr_bands)} bands and none are marked red, green and "
                f"blue, which the model generates",
                hint="name them with --rgb R,G,B (1-based LR band indexes, e.g. --rgb 3,2,1), "
                "or select three bands with -b",
            )
        found = everything
    unpaired = [lr_bands[i] for i in found if ref_of_lr[i] is None]
    if unpaired:
        raise InputError(
            f"reference {ref_path} has no band for LR band(s) {', '.join(map(str, unpaired))}, "
            f"which the model generates",
            hint="map reference bands with --ref-bidx, one per LR band (0 for none)",
        )
    others = [i for i in everything if i not in found]
    return BandRoutes(
        core=found,
        core_ref=tuple(ref_of_lr[i] for i in found),
        transfer=tuple((i, ref) for i in others if (ref := ref_of_lr[i]) is not None),
        bicubic=tuple(i for i in others if ref_of_lr[i] is None),
    )


class RoutedEngine:
    """An engine over all bands: ``inner`` on the core bands, ``guided`` or bicubic on the rest.

    Tiling, scale and normalisation are the inner engine's. The other bands are
    transferred one by one (each band's own colour fit and trust) with the shift
    registered on the core bands; ``ref_strength`` S scales their reference detail as the
    guided engine does: ``U(L) + S (X - U(L))``.
    """

    def __init__(self, inner: Engine, routes: BandRoutes, *, ref_strength: float = 1.0) -> None:
        self.inner = inner
        self.routes = routes
        self.ref_strength = ref_strength
        self.name = inner.name
        self.sha256 = inner.sha256
        self.scale = inner.scale
        self.bands: int | None = routes.bands
        self.margin_px = inner.margin_px
        self.size_multiple = inner.size_multiple
        self.tile_px = inner.tile_px
        self.overlap_px = inner.overlap_px
        self.normalization = inner.normalization
        self.mask_channel = inner.mask_channel
        self.uses_reference = inner.uses_reference
        self.guided_config = inner.guided_config

    def __getattr__(self, name: str) -> Any:
        """Anything else (device, model, sampler...) is the inner engine's."""
        return getattr(self.inner, name)

    def core_batch(self, batch: EngineBatch) -> EngineBatch:
        """The batch restricted to the core bands, in the engine's order."""
        ref_positions = [r for r in self.routes.core_ref if r is not None]
        return dataclasses.replace(
            batch, lr=batch.lr[:, list(self.routes.core)], ref=batch.ref[:, ref_positions]
        )

    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        core = self.core_batch(batch)
        out = torch.empty(
            (batch.lr.shape[0], self.routes.bands, batch.ref.shape[2], batch.ref.shape[3])
        )
        out[:, list(self.routes.core)] = self.inner(core).float()
        if self.routes.transfer:
            lr_pos, ref_pos = (list(p) for p in zip(*self.routes.transfer, strict=True))
            out[:, lr_pos] = self._transfer(core, batch.lr[:, lr_pos], batch.ref[:, ref_pos])
        if self.routes.bicubic:
            out[:, list(self.routes.bicubic)] = upsample(
                batch.lr[:, list(self.routes.bicubic)].float(), self.scale, clamp=False
            )
        return out

    def _transfer(self, core: EngineBatch, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) guided estimates of K other bands, each fitted on its own."""
        shift = core.ref_shift
        if shift is None:
            shift = reference_shift(
                core.lr,
                core.ref,
                ref_valid=core.ref_valid,
                scale=self.scale,
                config=self.guided_config,
            )
        k = lr.shape[1]

        def per_band(x: torch.Tensor) -> torch.Tensor:  # (B, K, ...) -> (B K, 1, ...)
            return x.reshape(x.shape[0] * k, 1, *x.shape[2:])

        def repeat(x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B K, ...)
            return x.repeat_interleave(k, dim=0)

        result = guided_transfer(
            per_band(lr.float()),
            per_band(ref.float()),
            mask=repeat(core.mask.float()),
            ref_valid=repeat(core.ref_valid),
            scale=self.scale,
            config=self.guided_config,
            shift=repeat(shift),
        )
        estimate = result.estimate.reshape(lr.shape[0], k, *result.estimate.shape[2:])
        if self.ref_strength == 1.0:
            return estimate
        lr_up = upsample(lr.float(), self.scale, clamp=False)
        return lr_up + self.ref_strength * (estimate - lr_up)

    def reference_weight(self, batch: EngineBatch) -> torch.Tensor:
        """The inner engine's weight on the core bands."""
        return self.inner.reference_weight(self.core_batch(batch))

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "band_routes": dataclasses.asdict(self.routes)}
