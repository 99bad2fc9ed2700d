"""Canonical band names, from a band's colour interpretation or its description.

Used to find red, green and blue among an input's bands, to pair LR and reference bands by
name, and to tell whether an output is RGB.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Descriptions (lower case) that name a band: plain names, Sentinel-2 and Landsat 8 band ids.
BAND_ALIASES = {
    "red": "red",
    "b04": "red",
    "b4": "red",
    "green": "green",
    "b03": "green",
    "b3": "green",
    "blue": "blue",
    "b02": "blue",
    "b2": "blue",
    "nir": "nir",
    "b08": "nir",
    "b8": "nir",
}
RGB = ("red", "green", "blue")


def band_name(colour: str | None, description: str | None) -> str | None:
    """A band's canonical name, lower case: its description if it is a known band name (the
    aliases above), else its colour interpretation if red, green or blue (GDAL gives 3- and
    4-band byte rasters RGB(A) by default, so a description says more), else its
    description as written, else None (unnamed)."""
    text = (description or "").strip().lower()
    if text in BAND_ALIASES:
        return BAND_ALIASES[text]
    if colour is not None and colour.lower() in RGB:
        return colour.lower()
    return text or None


def names_are_usable(names: Sequence[str | None]) -> bool:
    """True when every band has a name and no two share one (safe to pair by name)."""
    return all(name is not None for name in names) and len(set(names)) == len(names)
