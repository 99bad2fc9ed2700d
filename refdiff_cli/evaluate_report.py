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
from refdiff_cli.evaluate_inputs import Sample
from refdiff_cli.geo.images import write_png
from refdiff_cli.metrics import REGIONS, MetricValue, image_metrics
from refdiff_cli.perceptual import LPIPS, MIN_SIDE_PX, to_lpips_range

#: Metric columns of the CSV, always all present (empty where a metric does not apply).
CSV_METRICS = ("pixels", "psnr", "ssim", "psnr_y", "ssim_y", "sam", "ergas", "lpips")
CSV_COLUMNS = ("image", "method", "region", *CSV_METRICS, "data_range", "cropped")
#: Largest figure panel edge, output pixels; larger images show a crop around their change.
FIGURE_PANEL_PX = 256
#: White gap between figure panels, pixels.
FIGURE_GAP_PX = 4
#: Percentiles of the display stretch of data that is not uint8.
DISPLAY_PERCENTILES = (2.0, 98.0)


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


class Figure:
    """Collects the rows of the comparison figure while the evaluation streams over images.

    Rows are the images named in ``wanted``, or the ``wanted`` images with the most changed
    pixels (ties: by name), ordered that way; only those rows' panels are kept in memory.

    Args:
        wanted: number of images, or their names.
        methods: method names in column order (after the LR column).
        scale: SR factor (the LR panel is the LR repeated ``scale`` times, nearest).
    """

    def __init__(self, wanted: int | Sequence[str], methods: Sequence[str], scale: int) -> None:
        self.wanted = wanted
        self.methods = tuple(methods)
        self.scale = scale
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
        self.rows.append(FigureRow(name=sample.name, changed_pixels=count, panels=tuple(panels)))
        wanted = self.wanted
        if isinstance(wanted, int):
            self.rows.sort(key=lambda r: (-r.changed_pixels, r.name))
            del self.rows[wanted:]
        else:
            self.rows.sort(key=lambda r: list(wanted).index(r.name))

    def image(self) -> npt.NDArray[np.uint8]:
        """The figure (3, rows, cols) uint8: panels on a white background, 4 px apart."""
        if not self.rows:
            raise ValueError("the figure has no rows")
        height = max(p.shape[1] for row in self.rows for p in row.panels)
        width = max(p.shape[2] for row in self.rows for p in row.panels)
        n_rows, n_cols = len(self.rows), len(self.columns)
        gap = FIGURE_GAP_PX
        canvas = np.full(
            (3, n_rows * height + (n_rows - 1) * gap, n_cols * width + (n_cols - 1) * gap),
            255,
            dtype=np.uint8,
        )  # (3, rows, cols)
        for i, row in enumerate(self.rows):
            for j, panel in enumerate(row.panels):
                top, left = i * (height + gap), j * (width + gap)
                canvas[:, top : top + panel.shape[1], left : left + panel.shape[2]] = panel
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
