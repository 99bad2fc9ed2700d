"""Per-image scores of evaluate and the CSV of them; the PNG figure is ``evaluate/figure.py``."""

from __future__ import annotations

import contextlib
import csv
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
from refdiff_cli.metrics.perceptual import LPIPS, MIN_SIDE_PX, to_lpips_range
from refdiff_cli.metrics.scores import REGIONS, MetricValue, image_metrics

#: Metric columns of the CSV, always all present (empty where a metric does not apply).
CSV_METRICS = ("pixels", "psnr", "ssim", "psnr_y", "ssim_y", "sam", "ergas", "lpips")
CSV_COLUMNS = ("image", "method", "region", *CSV_METRICS, "data_range", "cropped")


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
