"""Per-image scores of evaluate and their outputs besides the JSON: the CSV and the PNG figure."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from refdiff_cli.errors import OutputError
from refdiff_cli.evaluate.inputs import Sample
from refdiff_cli.geo.images import write_png
from refdiff_cli.metrics.perceptual import LPIPS, MIN_SIDE_PX, to_lpips_range
from refdiff_cli.metrics.pixel import psnr
from refdiff_cli.metrics.scores import REGIONS, MetricValue, image_metrics

#: Metric columns of the CSV, always all present (empty where a metric does not apply).
CSV_METRICS = ("pixels", "psnr", "ssim", "psnr_y", "ssim_y", "sam", "ergas", "lpips")
CSV_COLUMNS = ("image", "method", "region", *CSV_METRICS, "data_range", "cropped")
#: Largest figure panel edge, output pixels; larger images show a crop around their change.
FIGURE_PANEL_PX = 256
#: White gap between figure panels, pixels.
FIGURE_GAP_PX = 4
#: Percentiles of the display stretch of data that is not uint8.
DISPLAY_PERCENTILES = (2.0, 98.0)
#: Font pixels are this many figure pixels at the default size (glyphs 10 x 18 px); labels
#: that do not fit their place are drawn at 1 and then shortened with "..".
LABEL_SCALE = 2
#: Blank space around label text, pixels.
LABEL_PAD_PX = 4
#: Characters per line of an image name beside its row; longer names wrap.
ROW_LABEL_CHARS = 14
#: Glyph cell of the bitmap font, pixels: 5 wide, 7 above the baseline and 2 below.
GLYPH_W, GLYPH_H = 5, 9
#: The bitmap font, printable ASCII (32-126) in order: per glyph nine 5-bit rows, top row in
#: the high bits, leftmost pixel in each row's high bit. Drawn for refdiff, so a figure needs
#: no font file and no imaging library; other characters are drawn as "?".
_GLYPHS = (
    0x000000000000,
    0x042108401000,
    0x0A5280000000,
    0x0A57D5F52800,
    0x047D1C5F1000,
    0x18C888898C00,
    0x0C9511593400,
    0x042200000000,
    0x022210820800,
    0x082084222000,
    0x00255D520000,
    0x00213E420000,
    0x000000021100,
    0x00003E000000,
    0x000000063000,
    0x000888880000,
    0x0E8CEB98B800,
    0x046108423800,
    0x0E8844447C00,
    0x1F110418B800,
    0x0232A5F10800,
    0x1F878218B800,
    0x06443D18B800,
    0x1F0888842000,
    0x0E8C5D18B800,
    0x0E8C5E113000,
    0x006300C60000,
    0x006300C62000,
    0x022220820800,
    0x0007C1F00000,
    0x082082222000,
    0x0E8844401000,
    0x0E885B5AB800,
    0x0E8C7F18C400,
    0x1E8C7D18F800,
    0x0E8C2108B800,
    0x1C9463197000,
    0x1F843D087C00,
    0x1F843D084000,
    0x0E8C2F18BC00,
    0x118C7F18C400,
    0x0E2108423800,
    0x071084293000,
    0x119531494400,
    0x108421087C00,
    0x11DD6B18C400,
    0x118E6B38C400,
    0x0E8C6318B800,
    0x1E8C7D084000,
    0x0E8C63593400,
    0x1E8C7D494400,
    0x0F841C10F800,
    0x1F2108421000,
    0x118C6318B800,
    0x118C63151000,
    0x118C6B5AA800,
    0x118A88A8C400,
    0x118A88421000,
    0x1F0888887C00,
    0x0E4210843800,
    0x008208208000,
    0x0E1084213800,
    0x045440000000,
    0x0000000003E0,
    0x082080000000,
    0x000382F8BC00,
    0x1087A318F800,
    0x0003A108B800,
    0x010BE318BC00,
    0x0003A3F83800,
    0x064A38842000,
    0x0003E318BC2E,
    0x1085B318C400,
    0x040308423800,
    0x020184210A4C,
    0x1084A98A4800,
    0x0C2108423800,
    0x0006AB5AD400,
    0x0005B318C400,
    0x0003A318B800,
    0x0007A318FA10,
    0x0003E318BC21,
    0x0005B3084000,
    0x0003E0E0F800,
    0x084710849800,
    0x00046319B400,
    0x000463151000,
    0x0004635AA800,
    0x000454454400,
    0x00046318BC2E,
    0x0007C4447C00,
    0x022110420800,
    0x042108421000,
    0x082104422000,
    0x00022A200000,
)


def check_output_folder(path: Path | None, option: str) -> None:
    """Fail before any work when an output file could not be written there (exit 4).

    Its folder must exist and take a new file (a temp file is created and removed); the path
    itself must be absent or a regular file (never a folder, a device or a pipe to replace).
    """
    if path is None:
        return
    path = Path(path)
    folder = path.absolute().parent
    if not folder.is_dir():
        raise OutputError(
            f"{option} {path}: folder {folder} does not exist", hint=f"mkdir -p {folder}"
        )
    if os.path.lexists(path) and not path.is_file():
        raise OutputError(
            f"{option} {path} exists and is not a regular file",
            hint="give the path of a file to create or replace",
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise OutputError(
            f"{option} {path}: cannot write to folder {folder} ({exc.strerror or exc})",
            hint="choose a writable folder or fix its permissions",
        ) from exc
    os.close(fd)
    os.unlink(probe)


def data_range_of(sample: Sample, option: float | None) -> float:
    """``--data-range``, else 255 for uint8 HR, else the HR's valid (max - min) (1 if flat)."""
    if option is not None:
        return option
    if sample.hr_dtype == np.uint8:
        return 255.0
    values = sample.hr[:, sample.valid]
    spread = float(values.max() - values.min()) if values.size else 0.0
    return spread if spread > 0 else 1.0


def score(
    sample: Sample,
    sr: npt.NDArray[Any],
    sr_valid: npt.NDArray[np.bool_],
    *,
    data_range: float,
    border: int = 0,
    rgb: bool = True,
    lpips: LPIPS | None = None,
) -> dict[str, dict[str, MetricValue]]:
    """``metrics.image_metrics`` of one SR against the sample's HR, plus LPIPS when loaded.

    Pixels count where the SR, the HR and the mask all have a value; the changed region is the
    mask's changed pixels among them. ``lpips`` is None unless weights were given and the
    image is RGB (3 bands) and at least 31 px after the border crop.
    """
    valid = sample.valid & sr_valid
    hr = np.where(sample.hr_valid[None], sample.hr, 0)
    changed = sample.changed
    report = image_metrics(
        sr,
        hr,
        changed=changed,
        valid=valid,
        data_range=data_range,
        scale=sample.hr.shape[1] / sample.lr.shape[1],
        border=border,
        rgb=rgb,
    )
    for region in REGIONS:  # every metric key in every report: None where it does not apply
        for metric in CSV_METRICS:
            report[region].setdefault(metric, None)
    b = border
    inner = (slice(None), slice(b, hr.shape[1] - b), slice(b, hr.shape[2] - b))
    if lpips is None or hr.shape[0] != 3 or min(hr[inner].shape[1:]) < MIN_SIDE_PX:
        return report
    low = 0.0 if sample.hr_dtype == np.uint8 else float(hr[:, valid].min(initial=0.0))
    a = to_lpips_range(sr[inner] - low, data_range=data_range)
    h = to_lpips_range(hr[inner] - low, data_range=data_range)
    regions = {"all": valid, "changed": changed & valid, "unchanged": ~changed & valid}
    for region, mask in regions.items():
        if report[region]["pixels"]:
            value = lpips.distance(a, h, mask[inner[1:]])
            report[region]["lpips"] = None if math.isnan(value) else value
    return report


def csv_rows(
    name: str,
    method: str,
    report: Mapping[str, Mapping[str, MetricValue]],
    *,
    data_range: float,
    cropped: bool,
) -> list[dict[str, Any]]:
    """One CSV row per region of an image's metrics (``metrics.image_metrics`` + lpips)."""
    rows = []
    for region in REGIONS:
        entry = report[region]
        row: dict[str, Any] = {"image": name, "method": method, "region": region}
        row.update({metric: entry.get(metric) for metric in CSV_METRICS})
        row.update(data_range=data_range, cropped=cropped)
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    return str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the per-image rows as CSV (header ``CSV_COLUMNS``), atomically (temp + rename).

    Empty cells are metrics that do not apply (Y metrics of non-RGB images, SAM of 1-band
    images, LPIPS without weights) or regions without pixels; ``inf`` is an exact PSNR.
    """
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in CSV_COLUMNS])
    _write_text(Path(path), buffer.getvalue())


def _write_text(path: Path, text: str) -> None:
    temp = path.absolute().parent / f".{path.name}.{secrets.token_hex(4)}.partial"
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise OutputError(
            f"cannot write {path} ({exc})", hint="check the folder's permissions and free space"
        ) from exc


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
        names = [_wrap(row.name, ROW_LABEL_CHARS, height // line) for row in self.rows]
        longest = max(len(text) for lines in names for text in lines)
        return FigureLayout(
            panel_h=height,
            panel_w=width,
            header_h=line + LABEL_PAD_PX,
            label_w=_text_width(" " * longest, LABEL_SCALE) + 2 * LABEL_PAD_PX,
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
            _draw_label(canvas, title, LABEL_PAD_PX, left, at.panel_w, centre=True)
        line = GLYPH_H * LABEL_SCALE + LABEL_PAD_PX
        for i, row in enumerate(self.rows):
            top = at.panel_top(i)
            for k, text in enumerate(_wrap(row.name, ROW_LABEL_CHARS, at.panel_h // line)):
                _draw_label(canvas, text, top + k * line, LABEL_PAD_PX, at.label_w, centre=False)
            for j, panel in enumerate(row.panels):
                left = at.panel_left(j)
                canvas[:, top : top + panel.shape[1], left : left + panel.shape[2]] = panel
            for j, value in enumerate(row.psnr, start=1):  # the method columns
                caption = [f"PSNR {_db(value)} dB", f"{_db(value)} dB", _db(value)]
                _draw_label(
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


def _wrap(text: str, width: int, max_lines: int) -> list[str]:
    """``text`` cut into lines of ``width`` characters, at most ``max_lines`` (>= 1) of them;
    a cut-off end is marked with ".."."""
    lines = [text[i : i + width] for i in range(0, len(text), width)] or [""]
    keep = max(1, max_lines)
    if len(lines) > keep:
        lines = lines[:keep]
        lines[-1] = lines[-1][: width - 2] + ".."
    return lines


def _text_width(text: str, scale: int) -> int:
    """Width of ``text`` in pixels at font scale ``scale`` (one blank font pixel between
    glyphs, none after the last)."""
    return max(0, len(text) * (GLYPH_W + 1) * scale - scale)


def _draw_label(
    canvas: npt.NDArray[np.uint8],
    text: str | Sequence[str],
    top: int,
    left: int,
    width: int,
    *,
    centre: bool,
) -> None:
    """Draw the first of the ``text`` variants that fits ``width`` px, black, at ``top``.

    Each variant is tried at ``LABEL_SCALE``, then all at scale 1; if none fits, the last is
    shortened with "..". ``centre`` centres it in the ``width`` px from ``left``.
    """
    variants = [text] if isinstance(text, str) else list(text)
    for scale in (LABEL_SCALE, 1):
        fitting = [v for v in variants if _text_width(v, scale) <= width]
        if fitting:
            chosen = fitting[0]
            break
    else:
        scale, chosen = 1, variants[-1]
        room = max(0, (width + 1) // (GLYPH_W + 1) - 2)
        chosen = chosen[:room] + ".."
    offset = (width - _text_width(chosen, scale)) // 2 if centre else 0
    _draw_text(canvas, chosen, top, left + max(0, offset), scale)


def _draw_text(canvas: npt.NDArray[np.uint8], text: str, top: int, left: int, scale: int) -> None:
    """Draw ``text`` black onto ``canvas`` (3, H, W) with the bitmap font, clipped to it."""
    bits = np.array([1 << (GLYPH_W - 1 - x) for x in range(GLYPH_W)])
    for k, char in enumerate(text):
        code = ord(char)
        glyph = _GLYPHS[code - 32] if 32 <= code < 127 else _GLYPHS[ord("?") - 32]
        rows = [(glyph >> (GLYPH_W * (GLYPH_H - 1 - y))) & 0x1F for y in range(GLYPH_H)]
        mask = (np.array(rows)[:, None] & bits[None]) > 0  # (GLYPH_H, GLYPH_W)
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
        x0 = left + k * (GLYPH_W + 1) * scale
        y1, x1 = min(top + mask.shape[0], canvas.shape[1]), min(x0 + mask.shape[1], canvas.shape[2])
        if y1 <= top or x1 <= x0:
            continue
        region = canvas[:, top:y1, x0:x1]  # (3, h, w), a view
        region[:, mask[: y1 - top, : x1 - x0]] = 0


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
