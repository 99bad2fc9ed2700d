"""Synthetic reference images for single-date imagery: seeded alterations of HR plus their mask.

``prepare --synthesize-changes`` makes a training triplet from one HR image (model space,
[-1, 1]): the reference is the HR after

1. a global radiometric difference, never marked as change because real references differ
   from the current image everywhere: an optional slight Gaussian blur, then per band
   ``y = offset + gain * x ** gamma`` on ``x = (v + 1) / 2`` in [0, 1] (clipped to [0, 1]);
2. pasted patches: rectangles copied from elsewhere in the same (shifted) image, optionally
   flipped, standing in for objects that appeared or vanished;
3. removed objects: an ellipse inside a rectangle replaced by a smooth fill interpolated
   from the rectangle's (smoothed) border colours (a Coons patch), plus faint noise.

The mask is 1.0 exactly on the pixels of steps 2 and 3. All ranges (``SynthesisConfig``) are
ours, not the paper's; every draw comes from the generator passed in (``rng_for``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

#: Edge of the image area that one unit of the per-image alteration counts refers to, and the
#: largest side that alteration sizes are fractions of, in pixels.
UNIT_EDGE_PX = 256
#: Tries to place a pasted patch's source rectangle clear of its destination.
PLACEMENT_TRIES = 10


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SynthesisConfig:
    """Ranges of the random alterations (ours; each range is (low, high), both inclusive).

    Attributes:
        pastes: pasted patches per 256x256 px of image area (at least ``pastes[0]``).
        removals: removed objects per 256x256 px of image area.
        patch_fraction: pasted patch edge as a fraction of the image's shorter side (at most
            256 px counted, so objects keep their size in large scenes).
        removal_fraction: removed object's bounding-box edge, the same way.
        min_edge_px: smallest patch or object edge, pixels (>= 3).
        gain, gamma, offset: per-band global colour shift on [0, 1]-scaled values; offset in
            units of the band's range.
        blur_probability: chance (0..1) of a global Gaussian blur.
        blur_sigma_px: its standard deviation range, pixels.
        fill_noise: standard deviation of the noise added to a removal fill, model-space units.
    """

    pastes: tuple[int, int] = (1, 3)
    removals: tuple[int, int] = (1, 3)
    patch_fraction: tuple[float, float] = (1 / 16, 1 / 4)
    removal_fraction: tuple[float, float] = (1 / 16, 1 / 5)
    min_edge_px: int = 4
    gain: tuple[float, float] = (0.85, 1.15)
    gamma: tuple[float, float] = (0.8, 1.25)
    offset: tuple[float, float] = (-0.05, 0.05)
    blur_probability: float = 0.5
    blur_sigma_px: tuple[float, float] = (0.4, 1.2)
    fill_noise: float = 0.02

    def __post_init__(self) -> None:
        ranges = ("pastes", "removals", "patch_fraction", "removal_fraction", "gain", "gamma")
        for name in (*ranges, "offset", "blur_sigma_px"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"{name} range ({low}, {high}) is not increasing")
        if self.pastes[0] < 0 or self.removals[0] < 0 or self.min_edge_px < 3:
            raise ValueError("counts must be >= 0 and min_edge_px >= 3")
        if self.gain[0] <= 0 or self.gamma[0] <= 0 or self.blur_sigma_px[0] < 0:
            raise ValueError("gain and gamma must be positive, blur sigma non-negative")
        if not 0.0 <= self.blur_probability <= 1.0 or self.fill_noise < 0:
            raise ValueError("blur_probability must be in [0, 1], fill_noise >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ColourShift:
    """Per-band ``y = offset + gain * x ** gamma`` on ``x = (v + 1) / 2``, clipped to [0, 1]."""

    gain: tuple[float, ...]
    gamma: tuple[float, ...]
    offset: tuple[float, ...]

    def apply(self, values: Array) -> Array:
        """Shift model-space values (C, H, W) in [-1, 1]; returns (C, H, W) float32 in [-1, 1]."""
        x = np.clip((values.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)  # (C, H, W)
        gain = np.asarray(self.gain)[:, None, None]  # (C, 1, 1)
        gamma = np.asarray(self.gamma)[:, None, None]  # (C, 1, 1)
        offset = np.asarray(self.offset)[:, None, None]  # (C, 1, 1)
        y = np.clip(offset + gain * np.power(x, gamma), 0.0, 1.0)
        return np.asarray(2.0 * y - 1.0, dtype=np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Alteration:
    """One marked change: ``kind`` over the rectangle (row, col, height, width) in pixels.

    ``source`` is the (row, col) a pasted patch was copied from (flipped per ``flip``);
    a removal fills the ellipse inscribed in the rectangle.
    """

    kind: Literal["paste", "remove"]
    box: tuple[int, int, int, int]
    source: tuple[int, int] | None = None
    flip: tuple[bool, bool] = (False, False)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Synthesis:
    """A synthetic reference and what was done to make it.

    Attributes:
        ref: (C, H, W) float32 in [-1, 1].
        mask: (1, H, W) float32, 1.0 on altered pixels, else 0.0.
        ref_valid: (H, W) bool, the HR validity carried along with copied pixels.
        colour: the global colour shift (not marked).
        blur_sigma_px: the global blur's sigma in pixels (0.0: none; not marked).
        alterations: the marked changes, in the order applied.
    """

    ref: Array
    mask: Array
    ref_valid: npt.NDArray[np.bool_]
    colour: ColourShift
    blur_sigma_px: float
    alterations: tuple[Alteration, ...]

    def base(self, hr: Array) -> Array:
        """The reference without marked changes: blur then colour shift of ``hr`` (C, H, W)."""
        return self.colour.apply(gaussian_blur(hr, self.blur_sigma_px))

    def summary(self) -> dict[str, Any]:
        """JSON-ready provenance: the global shift and the counts of each alteration."""
        return {
            "colour": dataclasses.asdict(self.colour),
            "blur_sigma_px": self.blur_sigma_px,
            "pastes": sum(a.kind == "paste" for a in self.alterations),
            "removals": sum(a.kind == "remove" for a in self.alterations),
            "changed_fraction": float(self.mask.mean()),
        }


def rng_for(seed: int, name: str) -> np.random.Generator:
    """The generator of one source image: a pure function of ``seed`` and the image's name."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "big")])


def gaussian_blur(values: Array, sigma_px: float) -> Array:
    """Separable Gaussian blur of (C, H, W) with reflected edges; ``sigma_px`` 0 copies."""
    if sigma_px <= 0:
        return values.astype(np.float32, copy=True)
    radius = max(1, math.ceil(3 * sigma_px))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    taps /= taps.sum()
    out = values.astype(np.float64)
    for axis in (1, 2):
        width = [(0, 0)] * 3
        width[axis] = (radius, radius)
        padded = np.pad(out, width, mode="reflect" if out.shape[axis] > radius else "edge")
        length = out.shape[axis]
        out = sum(
            (w * np.take(padded, np.arange(k, k + length), axis=axis) for k, w in enumerate(taps)),
            start=np.zeros_like(out),
        )
    return out.astype(np.float32)


def _smooth_1d(line: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Smooth (C, n) border colours along n so a fill shows no streaks."""
    n = line.shape[1]
    sigma = max(1.0, n / 8)
    return gaussian_blur(line[:, None, :].astype(np.float32), sigma)[:, 0, :].astype(np.float64)


def coons_fill(ref: Array, box: tuple[int, int, int, int]) -> npt.NDArray[np.float64]:
    """Smooth (C, h, w) surface interpolated from the smoothed border of ``box`` in ``ref``."""
    row, col, h, w = box
    top = _smooth_1d(ref[:, row, col : col + w])  # (C, w)
    bottom = _smooth_1d(ref[:, row + h - 1, col : col + w])  # (C, w)
    left = _smooth_1d(ref[:, row : row + h, col])  # (C, h)
    right = _smooth_1d(ref[:, row : row + h, col + w - 1])  # (C, h)
    u = np.linspace(0.0, 1.0, w)[None, None, :]  # (1, 1, w) across columns
    v = np.linspace(0.0, 1.0, h)[None, :, None]  # (1, h, 1) down rows
    c00 = ((top[:, 0] + left[:, 0]) / 2)[:, None, None]  # (C, 1, 1) corners
    c01 = ((top[:, -1] + right[:, 0]) / 2)[:, None, None]
    c10 = ((bottom[:, 0] + left[:, -1]) / 2)[:, None, None]
    c11 = ((bottom[:, -1] + right[:, -1]) / 2)[:, None, None]
    ruled = (1 - v) * top[:, None, :] + v * bottom[:, None, :]  # (C, h, w)
    ruled = ruled + (1 - u) * left[:, :, None] + u * right[:, :, None]
    bilinear = (1 - u) * (1 - v) * c00 + u * (1 - v) * c01 + (1 - u) * v * c10 + u * v * c11
    return ruled - bilinear  # (C, h, w)


def _ellipse(h: int, w: int) -> npt.NDArray[np.bool_]:
    """(h, w) bool: the pixel centres inside the ellipse inscribed in an h x w box."""
    rows = (np.arange(h) + 0.5 - h / 2) / (h / 2)
    cols = (np.arange(w) + 0.5 - w / 2) / (w / 2)
    return np.asarray(rows[:, None] ** 2 + cols[None, :] ** 2 <= 1.0)


def _edge(rng: np.random.Generator, fraction: tuple[float, float], short: int, min_px: int) -> int:
    low = max(min_px, round(fraction[0] * short))
    high = max(low, round(fraction[1] * short))
    return int(rng.integers(low, high + 1))


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in rng.uniform(bounds[0], bounds[1], size=(n,)).tolist())


def _count(rng: np.random.Generator, bounds: tuple[int, int], area: int) -> int:
    units = max(1, round(area / UNIT_EDGE_PX**2))
    return int(rng.integers(bounds[0] * units, bounds[1] * units + 1))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def synthesize_ref(
    hr: Array,
    valid: npt.NDArray[np.bool_],
    *,
    rng: np.random.Generator,
    config: SynthesisConfig = SynthesisConfig(),
) -> Synthesis:
    """Make a reference and its change mask from one HR image (see the module docstring).

    Args:
        hr: (C, H, W) HR in model space, [-1, 1]; H and W at least ``config.min_edge_px``.
        valid: (H, W) bool validity of ``hr``.
        rng: the source image's generator (``rng_for``); the result depends only on it,
            ``hr``, ``valid`` and ``config``.
        config: the alteration ranges.

    Returns:
        The synthetic reference, mask and record of the alterations.
    """
    channels, height, width = hr.shape
    short = min(height, width, UNIT_EDGE_PX)
    if short < config.min_edge_px:
        raise ValueError(f"image {height}x{width} is smaller than {config.min_edge_px} px")
    colour = ColourShift(
        gain=_uniform(rng, config.gain, channels),
        gamma=_uniform(rng, config.gamma, channels),
        offset=_uniform(rng, config.offset, channels),
    )
    blurred = bool(rng.random() < config.blur_probability)
    sigma = float(rng.uniform(*config.blur_sigma_px)) if blurred else 0.0
    base = colour.apply(gaussian_blur(hr, sigma))  # (C, H, W)
    ref = base.copy()  # (C, H, W)
    mask = np.zeros((height, width), dtype=bool)  # (H, W)
    hr_valid = np.asarray(valid, dtype=bool)  # (H, W)
    ref_valid = hr_valid.copy()  # (H, W)
    alterations: list[Alteration] = []

    def place(h: int, w: int) -> tuple[int, int, int, int]:
        return (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)

    # Pasted patches, copied from the unaltered base elsewhere in the image.
    for _ in range(_count(rng, config.pastes, height * width)):
        h = min(height, _edge(rng, config.patch_fraction, short, config.min_edge_px))
        w = min(width, _edge(rng, config.patch_fraction, short, config.min_edge_px))
        dest = place(h, w)
        source = place(h, w)
        for _ in range(PLACEMENT_TRIES):
            if not _overlaps(dest, source):
                break
            source = place(h, w)
        flip = (bool(rng.random() < 0.5), bool(rng.random() < 0.5))
        rows = slice(source[0], source[0] + h)
        cols = slice(source[1], source[1] + w)
        patch, patch_valid = base[:, rows, cols], hr_valid[rows, cols]
        if flip[0]:
            patch, patch_valid = patch[:, ::-1], patch_valid[::-1]
        if flip[1]:
            patch, patch_valid = patch[:, :, ::-1], patch_valid[:, ::-1]
        d_rows, d_cols = slice(dest[0], dest[0] + h), slice(dest[1], dest[1] + w)
        ref[:, d_rows, d_cols] = patch
        ref_valid[d_rows, d_cols] = patch_valid
        mask[d_rows, d_cols] = True
        alterations.append(Alteration(kind="paste", box=dest, source=source[:2], flip=flip))

    # Removed objects: an ellipse filled smoothly from its box's border colours.
    for _ in range(_count(rng, config.removals, height * width)):
        h = min(height, _edge(rng, config.removal_fraction, short, config.min_edge_px))
        w = min(width, _edge(rng, config.removal_fraction, short, config.min_edge_px))
        box = place(h, w)
        inside = _ellipse(h, w)  # (h, w)
        fill = coons_fill(ref, box) + rng.normal(0.0, config.fill_noise, (channels, h, w))
        rows, cols = slice(box[0], box[0] + h), slice(box[1], box[1] + w)
        region = ref[:, rows, cols]
        region[:, inside] = np.clip(fill, -1.0, 1.0)[:, inside].astype(np.float32)
        mask[rows, cols] |= inside
        alterations.append(Alteration(kind="remove", box=box))

    return Synthesis(
        ref=np.clip(ref, -1.0, 1.0).astype(np.float32),
        mask=mask[None].astype(np.float32),  # (1, H, W)
        ref_valid=ref_valid,
        colour=colour,
        blur_sigma_px=sigma,
        alterations=tuple(alterations),
    )
