"""Upscale on awkward valid inputs (CRSs, rotation, dtypes, nodata, alpha) and more bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject

from refdiff_cli.data.tiling import PixelWindow
from refdiff_cli.geo.grid import upscaled
from refdiff_cli.geo.read import SourceReader, open_sources
from tests.conftest import RasterFactory, run_cli
from tests.integration.test_cli_upscale import HR_TRANSFORM, LR_TRANSFORM, SCALE, scene

UTM = "EPSG:32633"


def triplet_paths(make_raster: RasterFactory, lr: np.ndarray, **lr_profile: object) -> list[str]:
    rows, cols = lr.shape[-2:]
    lr_path = make_raster("lr.tif", lr, transform=LR_TRANSFORM, **lr_profile)
    ref = make_raster("ref.tif", scene(rows * SCALE, cols * SCALE, seed=1), transform=HR_TRANSFORM)
    cd = make_raster(
        "cd.tif", np.zeros((rows * SCALE, cols * SCALE), np.uint8), transform=HR_TRANSFORM
    )
    return [str(lr_path), "--ref", str(ref), "--mask", str(cd)]


def upscale(args: list[str], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["upscale", *args, "-o", str(out), "--engine", "bicubic", *extra])


def test_ref_in_web_mercator_lands_within_half_an_output_pixel(make_raster: RasterFactory) -> None:
    """A bright blob drawn at a known UTM position is found there after warping from 3857."""
    rows, cols = 24, 32
    hr_rows, hr_cols = rows * SCALE, cols * SCALE
    y, x = np.mgrid[0:hr_rows, 0:hr_cols] + 0.5
    cy, cx = 101.3, 77.6  # blob centre in output pixels
    blob = (200 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 6.0**2))).astype(np.float32)
    utm = make_raster("blob_utm.tif", blob, transform=HR_TRANSFORM)
    with rasterio.open(utm) as src:
        dst_transform, width, height = rasterio.warp.calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        mercator = np.zeros((height, width), np.float32)
        reproject(
            blob,
            mercator,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=dst_transform,
            dst_crs="EPSG:3857",
            resampling=Resampling.cubic,
        )
    ref = make_raster("ref3857.tif", mercator, crs="EPSG:3857", transform=dst_transform)
    lr = make_raster("lr.tif", scene(rows, cols)[:1], transform=LR_TRANSFORM)
    cd = make_raster("cd.tif", np.zeros((hr_rows, hr_cols), np.uint8), transform=HR_TRANSFORM)
    sources = open_sources(lr, ref, cd, scale=SCALE)
    out_grid = upscaled(sources.lr_grid, SCALE)
    with SourceReader(sources, out_grid) as reader:
        warped, valid = reader.read_ref(PixelWindow(0, 0, hr_rows, hr_cols))
    weight = np.where(valid, warped[0], 0.0)
    weight = np.where(weight > 20, weight, 0.0)
    found_y = (weight * y).sum() / weight.sum()
    found_x = (weight * x).sum() / weight.sum()
    assert abs(found_y - cy) < 0.5 and abs(found_x - cx) < 0.5, (found_y, found_x)


@pytest.mark.real_data
def test_real_landsat_ref_in_web_mercator_round_trips_onto_the_output_grid(
    shared_data: Path, tmp_path: Path
) -> None:
    """RGB.byte.tif (UTM 18N) as LR; its 8x upsampling reprojected to EPSG:3857 as ref.

    Warped back onto the output grid, the ref must match the UTM original without a shift:
    the best sub-pixel shift found by cross-correlation is below half an output pixel.
    """
    with rasterio.open(shared_data / "geotiff" / "RGB.byte.tif") as src:
        window = rasterio.windows.Window(200, 200, 64, 64)
        lr = src.read(window=window)
        lr_transform = src.window_transform(window)
        crs = src.crs
    lr_path = tmp_path / "lr.tif"
    with rasterio.open(
        lr_path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=lr_transform,
    ) as dst:
        dst.write(lr)
    hr_transform = lr_transform * Affine.scale(1 / SCALE)
    hr = np.stack([np.kron(b, np.ones((SCALE, SCALE))) for b in lr.astype(np.float32)])
    hr = np.stack([_smooth(b) for b in hr])
    west, south, east, north = rasterio.transform.array_bounds(512, 512, hr_transform)
    dst_transform, width, height = rasterio.warp.calculate_default_transform(
        crs, "EPSG:3857", 512, 512, left=west, bottom=south, right=east, top=north
    )
    mercator = np.zeros((3, height, width), np.float32)
    reproject(
        hr,
        mercator,
        src_transform=hr_transform,
        src_crs=crs,
        dst_transform=dst_transform,
        dst_crs="EPSG:3857",
        resampling=Resampling.cubic,
    )
    ref_path = tmp_path / "ref.tif"
    with rasterio.open(
        ref_path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="float32",
        crs="EPSG:3857",
        transform=dst_transform,
    ) as dst:
        dst.write(mercator)
    cd_path = tmp_path / "cd.tif"
    with rasterio.open(
        cd_path,
        "w",
        driver="GTiff",
        width=512,
        height=512,
        count=1,
        dtype="uint8",
        crs=crs,
        transform=hr_transform,
    ) as dst:
        dst.write(np.zeros((1, 512, 512), np.uint8))
    sources = open_sources(lr_path, ref_path, cd_path, scale=SCALE)
    with SourceReader(sources, upscaled(sources.lr_grid, SCALE)) as reader:
        back, valid = reader.read_ref(PixelWindow(0, 0, 512, 512))
    inner = slice(32, -32)
    assert valid[inner, inner].all()
    shift = _best_shift(hr[0][inner, inner], back[0][inner, inner])
    assert max(abs(shift[0]), abs(shift[1])) < 0.5, shift


def _smooth(band: np.ndarray) -> np.ndarray:
    """A separable 9-tap box blur: removes the nearest-upsampling blocks (keeps positions)."""
    kernel = np.ones(9) / 9
    rows = np.apply_along_axis(
        lambda r: np.convolve(np.pad(r, 4, mode="edge"), kernel, "valid"), 1, band
    )
    return np.apply_along_axis(
        lambda c: np.convolve(np.pad(c, 4, mode="edge"), kernel, "valid"), 0, rows
    )


def _best_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Sub-pixel (dy, dx) that best aligns ``b`` to ``a`` (quadratic peak of the correlation)."""
    fa = np.fft.fft2(a - a.mean())
    fb = np.fft.fft2(b - b.mean())
    corr = np.fft.ifft2(fa * np.conj(fb)).real
    iy, ix = np.unravel_index(np.argmax(corr), corr.shape)

    def refine(c_m: float, c_0: float, c_p: float) -> float:
        denominator = c_m - 2 * c_0 + c_p
        return 0.0 if denominator == 0 else 0.5 * (c_m - c_p) / denominator

    h, w = corr.shape
    dy = refine(corr[(iy - 1) % h, ix], corr[iy, ix], corr[(iy + 1) % h, ix])
    dx = refine(corr[iy, (ix - 1) % w], corr[iy, ix], corr[iy, (ix + 1) % w])
    sy = (iy + dy + h / 2) % h - h / 2
    sx = (ix + dx + w / 2) % w - w / 2
    return float(sy), float(sx)


@pytest.mark.real_data
def test_real_oscd_uint16_city_with_band_selection(shared_data: Path, tmp_path: Path) -> None:
    """OSCD Sentinel-2 (uint16, EPSG:4326): bands stacked, LR made 8x coarser, -b picks RGB."""
    city = shared_data / "oscd" / "rennes"
    bands = {}
    for name in ("B02", "B03", "B04", "B08"):
        (path,) = sorted((city / "imgs_1").glob(f"*_{name}.tif"))
        with rasterio.open(path) as src:
            bands[name] = src.read(1)
            crs, transform = src.crs, src.transform
    (later,) = [sorted((city / "imgs_2").glob(f"*_{n}.tif"))[0] for n in ("B04",)]
    stack = np.stack([bands[n] for n in ("B02", "B03", "B04", "B08")])  # blue, green, red, NIR
    rows, cols = (s // SCALE * SCALE for s in stack.shape[1:])
    stack = stack[:, :rows, :cols]
    ref = tmp_path / "ref.tif"
    profile = dict(driver="GTiff", dtype="uint16", crs=crs, photometric="minisblack")
    with rasterio.open(
        ref, "w", width=cols, height=rows, count=4, transform=transform, **profile
    ) as dst:
        dst.write(stack)
    lr_data = stack.reshape(4, rows // SCALE, SCALE, cols // SCALE, SCALE).mean(axis=(2, 4))
    lr = tmp_path / "lr.tif"
    lr_transform = transform * Affine.scale(SCALE)
    with rasterio.open(
        lr,
        "w",
        width=cols // SCALE,
        height=rows // SCALE,
        count=4,
        transform=lr_transform,
        **profile,
    ) as dst:
        dst.write(np.rint(lr_data).astype(np.uint16))
    (cm,) = sorted((city / "cm").glob("*.tif"))
    table = tmp_path / "oscd.csv"
    table.write_text("value,name,changed\n1,unchanged,false\n2,changed,true\n")
    cm_cut = tmp_path / "cm.tif"
    with rasterio.open(cm) as src:
        labels = src.read(1)[:rows, :cols]
    with rasterio.open(
        cm_cut, "w", driver="GTiff", width=cols, height=rows, count=1, dtype="uint8"
    ) as dst:
        dst.write(labels[None])
    out = tmp_path / "sr.tif"
    result = run_cli(
        [
            "upscale",
            str(lr),
            "--ref",
            str(ref),
            "--mask",
            str(cm_cut),
            "-o",
            str(out),
            "--engine",
            "bicubic",
            "-b",
            "3,2,1",
            "--mask-grid",
            "ref",
            "--mask-encoding",
            str(table),
            "--json",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert later.exists()
    with rasterio.open(out) as sr, rasterio.open(lr) as src:
        assert sr.count == 3 and sr.dtypes == ("uint16",) * 3
        assert sr.crs == src.crs and sr.crs.is_geographic
        data = sr.read()
        for out_band, lr_band in zip(range(3), (3, 2, 1), strict=True):
            lr_values = src.read(lr_band)
            # Values stay in the LR's range (bicubic overshoots a little, never wraps).
            assert data[out_band].min() >= 0.8 * lr_values.min()
            assert data[out_band].max() <= 1.2 * lr_values.max() < 65535
            block_means = (
                data[out_band].reshape(rows // SCALE, SCALE, cols // SCALE, SCALE).mean((1, 3))
            )
            assert np.median(np.abs(block_means - lr_values)) < 0.05 * lr_values.mean()


def test_alpha_band_is_a_mask_not_a_band(make_raster: RasterFactory, tmp_path: Path) -> None:
    rgb = scene(24, 32)
    alpha = np.full((1, 24, 32), 255, np.uint8)
    alpha[0, :, :8] = 0  # the left quarter has no data
    args = triplet_paths(make_raster, np.concatenate([rgb, alpha]))
    out = tmp_path / "sr.tif"
    result = upscale(args, out)
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as sr:
        assert sr.count == 3
        masks = sr.read_masks(1)
        assert (masks[:, : 8 * SCALE] == 0).all() and (masks[:, 8 * SCALE :] == 255).all()


@pytest.mark.parametrize("kind", ["rotated", "south-up"])
def test_rotated_and_south_up_lr_keep_their_transform(
    kind: str, make_raster: RasterFactory, tmp_path: Path
) -> None:
    if kind == "rotated":
        transform = (
            Affine.translation(500_000, 5_000_000) * Affine.rotation(30) * Affine.scale(4, -4)
        )
    else:
        transform = Affine(4.0, 0.0, 500_000.0, 0.0, 4.0, 4_999_904.0)
    lr = make_raster("lr.tif", scene(24, 32), transform=transform)
    hr_transform = transform * Affine.scale(1 / SCALE)
    ref = make_raster("ref.tif", scene(192, 256, seed=1), transform=hr_transform)
    cd = make_raster("cd.tif", np.zeros((192, 256), np.uint8), transform=hr_transform)
    out = tmp_path / "sr.tif"
    result = upscale([str(lr), "--ref", str(ref), "--mask", str(cd)], out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["report"]["ref_coverage"] > 0.99
    with rasterio.open(out) as sr, rasterio.open(lr) as src:
        assert sr.transform.almost_equals(src.transform * Affine.scale(1 / SCALE))
        # Not flipped: 8x8 block means follow the LR row order.
        blocks = sr.read(1).reshape(24, SCALE, 32, SCALE).mean(axis=(1, 3))
        assert np.corrcoef(blocks.ravel(), src.read(1).ravel().astype(float))[0, 1] > 0.99
    with rasterio.open(ref) as src:
        reference = src.read()
    sources = open_sources(lr, ref, cd, scale=SCALE)
    with SourceReader(sources, upscaled(sources.lr_grid, SCALE)) as reader:
        warped, valid = reader.read_ref(PixelWindow(0, 0, 192, 256))
    assert valid[4:-4, 4:-4].all()
    assert np.abs(warped[:, 4:-4, 4:-4] - reference[:, 4:-4, 4:-4]).max() < 1.0  # same grid


@pytest.mark.parametrize(
    ("dtype", "low", "high", "nodata"),
    [("uint16", 1, 20000, 0), ("int16", -3000, 3000, -32768), ("float32", -1.5, 2.5, None)],
)
def test_dtypes_are_kept_with_nodata_and_no_wraparound(
    dtype: str,
    low: float,
    high: float,
    nodata: float | None,
    make_raster: RasterFactory,
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    data = rng.uniform(low, high, size=(3, 24, 32))
    data[:, ::4] = high  # sharp edges at the top of the range: bicubic overshoots them
    data[:, 1::4] = low
    data = data.astype(dtype)
    if nodata is not None:
        data[:, :2, :2] = nodata
    else:
        data[0, 0, 0] = np.nan  # float without nodata: NaN is still invalid
    args = triplet_paths(make_raster, data, nodata=nodata)
    out = tmp_path / "sr.tif"
    result = upscale(args, out)
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as sr:
        assert sr.dtypes[0] == dtype
        values = sr.read(masked=True)
        valid = ~np.ma.getmaskarray(values)[0]
        if nodata is not None:
            assert sr.nodata == nodata
            assert not valid[: 2 * SCALE, : 2 * SCALE].any()
            assert valid[2 * SCALE :, :].all()
            if dtype == "uint16":
                # Overshoot below 0 clamps to 0, which is nodata: such pixels move to 1.
                assert values.min() >= 1
        else:
            assert np.isnan(sr.read(1)[:SCALE, :SCALE]).all()
            assert np.isfinite(sr.read(1)[SCALE:, :]).all()  # one NaN does not spread
        # Bicubic overshoots sharp stripes by up to ~25 %; a wrap-around would land far out.
        info_range = (low - 0.35 * (high - low), high + 0.35 * (high - low))
        assert info_range[0] <= values.min() and values.max() <= info_range[1]


def test_invalid_nodata_metadata_is_dropped_not_fatal(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    args = triplet_paths(make_raster, scene(24, 32))
    lr = Path(args[0])
    with rasterio.open(lr, "r+") as dst:
        dst.nodata = 255
    raw = lr.read_bytes()
    # Another tool wrote GDAL_NODATA "300" into a uint8 file (rasterio itself refuses to).
    patched = raw.replace(b"255\x00", b"300\x00", 1)
    assert patched != raw
    lr.write_bytes(patched)
    out = tmp_path / "sr.tif"
    result = upscale(args, out)
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as sr:
        # GDAL drops a nodata value that a uint8 band cannot hold; so does the output.
        assert sr.nodata is None
        assert sr.read_masks(1).all()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_lr_fails_before_model_work_even_if_gdal_is_told_to_ignore_errors(
    fraction: float, make_raster: RasterFactory, tmp_path: Path
) -> None:
    args = triplet_paths(make_raster, scene(48, 64))
    lr = Path(args[0])
    data = lr.read_bytes()
    lr.write_bytes(data[: int(len(data) * fraction)])
    out = tmp_path / "sr.tif"
    result = upscale(args, out, "--json")
    env_result = run_cli(
        ["upscale", *args, "-o", str(out), "--engine", "bicubic"],
        env={"GTIFF_IGNORE_READ_ERRORS": "YES"},
    )
    for res in (result, env_result):
        assert res.returncode == 3, res.stderr
        assert "truncated or corrupt" in res.stderr and "lr.tif" in res.stderr
        assert "tiles" not in res.stderr  # failed in the preflight: no tile was started
    assert json.loads(result.stdout)["status"] == "failed"
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("empty", 3, "empty file"),
        ("remote", 2, "remote inputs are not supported"),
        ("vrt", 3, "not a GeoTIFF"),
        ("band index", 2, "do not exist"),
        ("bad option", 2, "--batch-size"),
    ],
)
def test_more_bad_inputs(
    case: str, code: int, needle: str, make_raster: RasterFactory, tmp_path: Path
) -> None:
    args = triplet_paths(make_raster, scene(24, 32))
    extra: list[str] = []
    if case == "empty":
        (tmp_path / "empty.tif").write_bytes(b"")
        args[0] = str(tmp_path / "empty.tif")
    elif case == "remote":
        args[0] = "/vsicurl/http://127.0.0.1:9/lr.tif"
    elif case == "vrt":
        vrt = tmp_path / "disguised.tif"
        vrt.write_text(
            '<VRTDataset rasterXSize="32" rasterYSize="24"><VRTRasterBand dataType="Byte" '
            f'band="1"><SimpleSource><SourceFilename>{args[0]}</SourceFilename></SimpleSource>'
            "</VRTRasterBand></VRTDataset>"
        )
        args[0] = str(vrt)
    elif case == "band index":
        extra = ["-b", "1,2,5"]
    else:
        extra = ["--batch-size", "0"]
    out = tmp_path / "out.tif"
    result = upscale(args, out, *extra)
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a read-only tmpfs")
def test_unwritable_output_folder_fails_before_model_work(
    make_raster: RasterFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("mount is not permitted here")
    try:
        result = upscale(triplet_paths(make_raster, scene(24, 32)), folder / "sr.tif")
        assert result.returncode == 4, result.stderr
        assert "not writable" in result.stderr
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_leave_nothing_under_the_output_name(
    sig: signal.Signals, code: int, make_raster: RasterFactory, tmp_path: Path
) -> None:
    """Ctrl-C and SIGTERM mid-run: exit 130/143, no output, no temp file, no lock holder."""
    args = triplet_paths(make_raster, scene(256, 256))  # 2048 x 2048 output, 1089 tiles
    out = tmp_path / "sr.tif"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "refdiff_cli",
            "upscale",
            *args,
            "-o",
            str(out),
            "--engine",
            "bicubic",
            "--tile",
            "64",
            "--overlap",
            "32",
            "--batch-size",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "tiles" in line:  # the first progress line: the run is under way
            break
    time.sleep(0.3)
    process.send_signal(sig)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == code, rest
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert "Traceback" not in rest


def test_closing_the_sources_waits_for_a_read_in_another_thread(
    make_raster: RasterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline reads the next batch in a background thread; an error in the main thread
    closes the sources meanwhile. The close must wait for that read (GDAL handles closed under
    a read crash the process), and later reads must fail cleanly."""
    import threading
    import time

    from refdiff_cli.geo import read as read_module

    paths = triplet_paths(make_raster, scene(16, 16))
    sources = open_sources(Path(paths[0]), Path(paths[2]), Path(paths[4]), scale=SCALE)
    inside, finished = threading.Event(), threading.Event()
    real_read_window = read_module.read_window

    def slow_read_window(*args: object) -> tuple[np.ndarray, np.ndarray]:
        inside.set()
        time.sleep(0.3)
        result = real_read_window(*args)  # type: ignore[arg-type]
        finished.set()
        return result

    monkeypatch.setattr(read_module, "read_window", slow_read_window)
    reader = SourceReader(sources, upscaled(sources.lr_grid, SCALE)).__enter__()
    results: list[tuple[np.ndarray, np.ndarray]] = []
    worker = threading.Thread(
        target=lambda: results.append(reader.read_lr(PixelWindow(0, 0, 8, 8)))
    )
    worker.start()
    assert inside.wait(10)
    reader.__exit__(None, None, None)  # in the main thread, while the read sleeps
    assert finished.is_set(), "the sources closed under a read in progress"
    worker.join(10)
    assert results and results[0][0].shape == (3, 8, 8)
    with pytest.raises(RuntimeError, match="already closed"):
        reader.read_lr(PixelWindow(0, 0, 8, 8))
