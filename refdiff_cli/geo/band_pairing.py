"""Which reference band goes with which LR band: one to one, by ``--ref-bidx``, by index or
by canonical band name."""

from __future__ import annotations

from collections.abc import Sequence

from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo.band_names import names_are_usable
from refdiff_cli.geo.raster_info import RasterInfo, select_bands

#: How to fix a pairing in evaluate and prepare, where every LR band needs a reference band.
ONE_TO_ONE_HINT = (
    "select matching bands with -b (LR) and --ref-bidx (ref), e.g. -b 1,2,3 --ref-bidx 1,2,3"
)
#: How to fix a pairing in upscale, where an LR band may go without one.
PARTIAL_HINT = "map reference bands with --ref-bidx, one per LR band (0 for none)"


def select_ref_bands(
    ref: RasterInfo,
    lr: RasterInfo,
    lr_sel: tuple[int, ...],
    bands: Sequence[int] | None,
    ref_bands: Sequence[int] | None,
) -> tuple[int, ...]:
    """The reference band of every LR band, one to one (evaluate, prepare).

    The rules of ``pair_reference_bands`` (so evaluate scores the pairing upscale makes), except
    that ``--ref-bidx`` takes no 0 and every LR band must find its own reference band.
    """
    if ref_bands is not None:
        selected = select_bands(ref, ref_bands)  # 0 is no band here
    else:
        wanted = _wanted(ref, lr, lr_sel, bands, hint=ONE_TO_ONE_HINT)
        selected = tuple(b for b in wanted if b is not None)
    if len(selected) != len(lr_sel):
        raise InputError(
            f"{lr.role} {lr.path} gives {len(lr_sel)} band(s) but ref {ref.path} gives "
            f"{len(selected)}",
            hint=ONE_TO_ONE_HINT,
        )
    return selected


def pair_reference_bands(
    ref: RasterInfo,
    lr: RasterInfo,
    lr_sel: tuple[int, ...],
    bands: Sequence[int] | None,
    ref_bands: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
    """The reference bands to read, and for each LR band the position of its own among them.

    The first rule that applies: ``ref_bands`` (``--ref-bidx``), one per LR band, 0 for none;
    the same indexes as ``bands`` (``-b``) when the reference has them all; by canonical name
    when both rasters name every band uniquely; else in order (a reference with fewer bands
    pairs the first ones; one with more is ambiguous).
    """
    if ref_bands is not None:
        if len(ref_bands) != len(lr_sel):
            raise ConfigError(
                f"--ref-bidx gives {len(ref_bands)} band(s) for {len(lr_sel)} LR band(s) of "
                f"{lr.path}",
                hint="give one reference band per LR band, 0 where the reference has none",
            )
        used = tuple(b for b in ref_bands if b != 0)
        if used:
            select_bands(ref, used)  # raises on indexes the reference does not have
        wanted: list[int | None] = [b or None for b in ref_bands]
    else:
        wanted = _wanted(ref, lr, lr_sel, bands, hint=PARTIAL_HINT)
    read_order = tuple(dict.fromkeys(b for b in wanted if b is not None))
    if not read_order:
        raise InputError(
            f"ref {ref.path} has no band named like a band of {lr.role} {lr.path}",
            hint=PARTIAL_HINT,
        )
    return read_order, tuple(None if b is None else read_order.index(b) for b in wanted)


def _wanted(
    ref: RasterInfo,
    lr: RasterInfo,
    lr_sel: tuple[int, ...],
    bands: Sequence[int] | None,
    *,
    hint: str,
) -> list[int | None]:
    """Each LR band's reference band (None: none) without ``--ref-bidx``: the same indexes as
    ``-b`` when the reference has them all, else by canonical name when both rasters name every
    band uniquely, else in order (a reference with more bands than the LR is ambiguous)."""
    if bands is not None and all(b <= ref.count for b in bands):
        return list(bands)
    ref_data = ref.data_bands
    lr_names, ref_names = lr.band_names(lr_sel), ref.band_names(ref_data)
    if names_are_usable(lr_names) and names_are_usable(ref_names):
        by_name = dict(zip(ref_names, ref_data, strict=True))
        return [by_name.get(name) for name in lr_names]
    if len(ref_data) <= len(lr_sel):
        return [*ref_data, *([None] * (len(lr_sel) - len(ref_data)))]
    raise InputError(
        f"{lr.role} {lr.path} gives {len(lr_sel)} band(s) but ref {ref.path} has "
        f"{len(ref_data)} and their bands are not named",
        hint=hint,
    )
