"""The comparison figure of ``refdiff evaluate --figure``: LR, each method, HR, reference and mask
side by side for the images with the most change, labelled with names and PSNRs, as a PNG.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from refdiff_cli.errors import OutputError
from refdiff_cli.evaluate.bitmap_font import (
    GLYPH_H,
    LABEL_SCALE,
    draw_label,
    text_width,
    wrap_text,
)
from refdiff_cli.evaluate.inputs import Sample
from refdiff_cli.evaluate.report import data_range_of
from refdiff_cli.geo.images import write_png
from refdiff_cli.metrics.pixel import psnr

#: Largest figure panel edge, output pixels; larger images show a crop around their change.
FIGURE_PANEL_PX = 256
#: White gap between figure panels, pixels.
FIGURE_GAP_PX = 4
#: Percentiles of the display stretch of data that is not uint8.
DISPLAY_PERCENTILES = (2.0, 98.0)
#: Blank space around label text, pixels.
LABEL_PAD_PX = 4
#: Characters per line of an image name beside its row; longer names wrap.
ROW_LABEL_CHARS = 14


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FigureRow:
    """One figure row: an image's panels, each (3, h, w) uint8, columns in ``Figure`` order."""

    name: str
    changed_pixels: int
    panels: tuple[npt.NDArray[np.uint8], ...]
    psnr: tuple[float | None, ...] = ()  # dB per method column; None: no common pixel


class Figure:
    """Collects the rows of the comparison figure while the evaluation streams over images.

    Rows are the images named in ``wanted``, or the ``wanted`` images with the most changed
    pixels (ties: by name), ordered that way; only those rows' panels are kept in memory.
    The image carries its labels: column names above the columns, each image's name left of
    its row and each method's PSNR over the image (dB, as in the CSV's ``all`` region) under
    its panel.

    Args:
        wanted: number of images, or their names.
        methods: method names in column order (after the LR column).
        scale: SR factor (the LR panel is the LR repeated ``scale`` times, nearest).
        data_range: ``--data-range`` of the PSNR captions (None: ``data_range_of``'s default).
        border: ``--border`` of the PSNR captions, pixels cropped from every side.
    """

    def __init__(
        self,
        wanted: int | Sequence[str],
        methods: Sequence[str],
        scale: int,
        *,
        data_range: float | None = None,
        border: int = 0,
    ) -> None:
        self.wanted = wanted
        self.methods = tuple(methods)
        self.scale = scale
        self.data_range = data_range
        self.border = border
        self.rows: list[FigureRow] = []

    @property
    def columns(self) -> tuple[str, ...]:
        """Column titles, left to right."""
        return ("lr", *self.methods, "hr", "reference", "mask")

    def wants(self, name: str, changed_pixels: int) -> bool:
        """Whether an image would enter the figure (so its panels are worth rendering)."""
        if not isinstance(self.wanted, int):
            return name in self.wanted
        if self.wanted <= 0:
            return False
        if len(self.rows) < self.wanted:
            return True
        last = self.rows[-1]
        return (-changed_pixels, name) < (-last.changed_pixels, last.name)

    def offer(
        self, sample: Sample, outputs: Mapping[str, tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]]
    ) -> None:
        """Consider an image: ``outputs`` maps each method to its SR (C, H, W) and validity."""
        changed = sample.changed
        count = int(changed.sum())
        if not self.wants(sample.name, count):
            return
        rows, cols = _panel_window(changed, sample.hr.shape[1:], FIGURE_PANEL_PX)
        stretch = _display_stretch(sample.hr, sample.hr_valid, sample.hr_dtype)
        ref_stretch = _display_stretch(sample.ref, sample.ref_valid, sample.hr_dtype)
        s = self.scale
        lr_up = np.repeat(np.repeat(sample.lr, s, axis=1), s, axis=2)  # (C, H, W)
        lr_valid = np.repeat(np.repeat(sample.lr_valid, s, axis=0), s, axis=1)  # (H, W)
        panels = [_render(lr_up[:, rows, cols], lr_valid[rows, cols], stretch)]
        for method in self.methods:
            sr, valid = outputs[method]
            panels.append(_render(sr[:, rows, cols], valid[rows, cols], stretch))
        panels.append(_render(sample.hr[:, rows, cols], sample.hr_valid[rows, cols], stretch))
        panels.append(_render(sample.ref[:, rows, cols], sample.ref_valid[rows, cols], ref_stretch))
        panels.append(_render_mask(changed[rows, cols], sample.mask_valid[rows, cols]))
        scores = tuple(self._psnr(sample, *outputs[method]) for method in self.methods)
        self.rows.append(
            FigureRow(name=sample.name, changed_pixels=count, panels=tuple(panels), psnr=scores)
        )
        wanted = self.wanted
        if isinstance(wanted, int):
            self.rows.sort(key=lambda r: (-r.changed_pixels, r.name))
            del self.rows[wanted:]
        else:
            self.rows.sort(key=lambda r: list(wanted).index(r.name))

    def _psnr(
        self, sample: Sample, sr: npt.NDArray[Any], sr_valid: npt.NDArray[np.bool_]
    ) -> float | None:
        """PSNR in dB of one method's SR, as ``score`` computes it; None without pixels."""
        hr = np.where(sample.hr_valid[None], sample.hr, 0)
        data_range = data_range_of(sample, self.data_range)
        value = psnr(
            sr, hr, data_range=data_range, region=sample.valid & sr_valid, border=self.border
        )
        return None if math.isnan(value) else value

    def layout(self) -> FigureLayout:
        """Where the panels and labels go (pixels); see ``FigureLayout``."""
        if not self.rows:
            raise ValueError("the figure has no rows")
        height = max(p.shape[1] for row in self.rows for p in row.panels)
        width = max(p.shape[2] for row in self.rows for p in row.panels)
        line = GLYPH_H * LABEL_SCALE + LABEL_PAD_PX
        names = [wrap_text(row.name, ROW_LABEL_CHARS, height // line) for row in self.rows]
        longest = max(len(text) for lines in names for text in lines)
        return FigureLayout(
            panel_h=height,
            panel_w=width,
            header_h=line + LABEL_PAD_PX,
            label_w=text_width(" " * longest, LABEL_SCALE) + 2 * LABEL_PAD_PX,
            caption_h=line + LABEL_PAD_PX if self.methods else 0,
            gap=FIGURE_GAP_PX,
            rows=len(self.rows),
            columns=len(self.columns),
        )

    def image(self) -> npt.NDArray[np.uint8]:
        """The figure (3, rows, cols) uint8: labelled panels on a white background.

        A header strip names the columns; a strip left of the panels names each row's image
        (wrapped at 14 characters); under each row a caption strip gives every method's
        PSNR in dB. Panels are 4 px apart.
        """
        at = self.layout()
        canvas = np.full((3, at.height, at.width), 255, dtype=np.uint8)  # (3, rows, cols)
        for j, title in enumerate(self.columns):
            left = at.panel_left(j)
            draw_label(canvas, title, LABEL_PAD_PX, left, at.panel_w, centre=True)
        line = GLYPH_H * LABEL_SCALE + LABEL_PAD_PX
        for i, row in enumerate(self.rows):
            top = at.panel_top(i)
            for k, text in enumerate(wrap_text(row.name, ROW_LABEL_CHARS, at.panel_h // line)):
                draw_label(canvas, text, top + k * line, LABEL_PAD_PX, at.label_w, centre=False)
            for j, panel in enumerate(row.panels):
                left = at.panel_left(j)
                canvas[:, top : top + panel.shape[1], left : left + panel.shape[2]] = panel
            for j, value in enumerate(row.psnr, start=1):  # the method columns
                caption = [f"PSNR {_db(value)} dB", f"{_db(value)} dB", _db(value)]
                draw_label(
                    canvas, caption, top + at.panel_h + LABEL_PAD_PX, at.panel_left(j),
                    at.panel_w, centre=True,
                )  # fmt: skip
        return canvas

    def write(self, path: Path) -> None:
        """Write the figure as PNG (``geo.images.write_png``: atomic, no side files).

        Raises:
            OutputError: the PNG could not be written, GDAL's own errors included (exit 4).
        """
        try:
            write_png(path, self.image())
        except OutputError:
            raise
        except Exception as exc:
            if not type(exc).__module__.startswith("rasterio"):
                raise
            # GDAL's CPLE_* errors are no RasterioError, so write_png lets them through.
            raise OutputError(
                f"--figure {path}: cannot write the PNG ({' '.join(str(exc).split())})",
                hint="choose a writable --figure path; the metrics were computed and any "
                "--csv written",
            ) from exc


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FigureLayout:
    """Geometry of a figure in pixels: a header strip of column names on top, a strip of image
    names on the left, then per row the panels and a caption strip of PSNRs under them."""

    panel_h: int
    panel_w: int
    header_h: int
    label_w: int
    caption_h: int
    gap: int
    rows: int
    columns: int

    def panel_top(self, row: int) -> int:
        """First pixel row of the panels of figure row ``row`` (0-based)."""
        return self.header_h + row * (self.panel_h + self.caption_h + self.gap)

    def panel_left(self, column: int) -> int:
        """First pixel column of the panels of figure column ``column`` (0-based)."""
        return self.label_w + column * (self.panel_w + self.gap)

    @property
    def height(self) -> int:
        """Figure height in pixels."""
        return self.panel_top(self.rows) - self.gap

    @property
    def width(self) -> int:
        """Figure width in pixels."""
        return self.panel_left(self.columns) - self.gap


def _db(value: float | None) -> str:
    """A PSNR caption value: ``24.31``, ``inf`` (identical images) or ``n/a`` (no pixels)."""
    if value is None:
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _panel_window(
    changed: npt.NDArray[np.bool_], shape: tuple[int, ...], size: int
) -> tuple[slice, slice]:
    """Rows and columns of a panel: at most ``size`` px, centred on the changed pixels."""
    height, width = shape
    if changed.any():
        ys, xs = np.nonzero(changed)
        centre = (int(ys.mean()), int(xs.mean()))
    else:
        centre = (height // 2, width // 2)
    out = []
    for c, length in zip(centre, (height, width), strict=True):
        extent = min(size, length)
        start = min(max(c - extent // 2, 0), length - extent)
        out.append(slice(start, start + extent))
    return out[0], out[1]


def _display_stretch(
    values: npt.NDArray[Any], valid: npt.NDArray[np.bool_], dtype: np.dtype[Any]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Per displayed band (low, high) of the 2-98 % stretch; None for uint8 data (shown as is)."""
    if dtype == np.uint8:
        return None
    shown = _display_bands(values)
    picked = shown[:, valid] if valid.any() else shown.reshape(shown.shape[0], -1)
    low, high = np.percentile(picked.astype(np.float64), DISPLAY_PERCENTILES, axis=1)  # (3,) each
    return low, np.maximum(high, low + 1e-12)


def _display_bands(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The first three bands, or band 1 as grey for images with fewer than three."""
    return values[:3] if values.shape[0] >= 3 else np.repeat(values[:1], 3, axis=0)


def _render(
    values: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_],
    stretch: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None,
) -> npt.NDArray[np.uint8]:
    """(3, h, w) uint8 panel of (C, h, w) values; invalid pixels black."""
    shown = _display_bands(values).astype(np.float64)  # (3, h, w)
    if stretch is not None:
        low, high = stretch
        shown = (shown - low[:, None, None]) / (high - low)[:, None, None] * 255.0
    shown = np.where(valid[None] & np.isfinite(shown), shown, 0.0)
    return np.clip(np.rint(shown), 0, 255).astype(np.uint8)


def _render_mask(
    changed: npt.NDArray[np.bool_], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint8]:
    """(3, h, w) mask panel: changed white, unchanged black, no mask value grey."""
    grey = np.where(changed, 255, np.where(valid, 0, 128)).astype(np.uint8)  # (h, w)
    return np.repeat(grey[None], 3, axis=0)
