"""The output write protocol (reliability.md §3.2, rows 32-43 of §6.1) on real files and faults."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff_cli.errors import ConfigError, InputError, Interrupted, OutputError
from refdiff_cli.geo import profiles, verify
from refdiff_cli.geo.preflight import preflight_output
from refdiff_cli.geo.verify import read_completion_tags
from refdiff_cli.geo.write import RasterWriter

ROTATED = Affine(0.5, 0.1, 500_000.0, 0.1, -0.5, 5_000_000.0)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Grid:
    """The attributes the writer reads from ``geo.grid.Grid``."""

    crs: str
    transform: Affine
    width: int
    height: int


def grid_for(data: np.ndarray, transform: Affine = ROTATED) -> Grid:
    return Grid(crs="EPSG:32633", transform=transform, width=data.shape[2], height=data.shape[1])


def write_all(
    out: Path,
    data: np.ndarray,
    *,
    nodata: float = 0,
    valid: np.ndarray | None = None,
    tags: dict[str, str] | None = None,
    before_publish: Callable[[], None] | None = None,
    **kwargs: Any,
) -> Path:
    """Write ``data`` (C, H, W) strip by strip through a RasterWriter and publish it."""
    with RasterWriter(
        out, grid_for(data), count=data.shape[0], dtype=data.dtype, nodata=nodata, **kwargs
    ) as writer:
        rows = writer.block_rows
        for row in range(0, data.shape[1], rows):
            strip_valid = None if valid is None else valid[row : row + rows]
            writer.write_strip(row, data[:, row : row + rows], strip_valid)
        return writer.finalize(tags or {}, before_publish=before_publish)


def litter(folder: Path) -> list[str]:
    """Temp and lock files the protocol may create in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".refdiff-" in p.name or p.suffix == ".lock")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def noise(shape: tuple[int, ...], dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100.0, 20.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -30000), min(info.max, 30000), shape, dtype=dtype)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Return ``mount(name, options) -> folder`` mounting a tmpfs; skip without root or mount."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        target = tmp_path / name
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs failed: {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=False)


CHILD_PRELUDE = """
import dataclasses, json, resource, signal, sys, time
from pathlib import Path
import numpy as np
from affine import Affine
from refdiff_cli.errors import OutputError
from refdiff_cli.geo.write import RasterWriter

@dataclasses.dataclass(frozen=True)
class Grid:
    crs: str
    transform: Affine
    width: int
    height: int

out = Path(sys.argv[1])
data = np.random.default_rng(0).integers(0, 256, (3, 1024, 1024), dtype=np.uint8)
grid = Grid("EPSG:32633", Affine(0.5, 0, 500000, 0, -0.5, 5000000), 1024, 1024)
"""


def child(code: str, out: Path) -> subprocess.Popen[str]:
    script = CHILD_PRELUDE + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "nodata"),
    [("uint8", 0), ("uint16", 65535), ("int16", -32768), ("float32", float("nan"))],
)
def test_round_trip_keeps_grid_values_nodata_descriptions_and_tags(
    tmp_path: Path, dtype: str, nodata: float
) -> None:
    data = noise((3, 300, 290), dtype)
    valid = np.ones((300, 290), dtype=bool)
    valid[10:20, 30:45] = False
    tags = {
        "REFDIFF_VERSION": "0.1.0",
        "REFDIFF_INPUTS": json.dumps({"lr": "/data/Zürich lr <1> & 'x'.tif", "n": [1, 2]}),
        "REFDIFF_OPTIONS": json.dumps({f"option_{i}": "v" * 40 for i in range(100)}),
    }
    out = write_all(
        tmp_path / "out.tif",
        data,
        nodata=nodata,
        valid=valid,
        tags=tags,
        band_descriptions=["red", "green", None],
    )
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == ROTATED
        assert src.dtypes == (dtype,) * 3
        assert src.descriptions == ("red", "green", None)
        assert src.profile["tiled"] is True
        assert src.block_shapes[0] == (256, 256)
        assert src.compression is not None
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == ("3" if dtype == "float32" else "2")
        back = src.read()  # (C, H, W)
        found_tags = src.tags()
        masked = src.read_masks(1) == 0
        assert np.isnan(src.nodata) if np.isnan(nodata) else src.nodata == nodata
    expected = np.where(valid[None], data, np.asarray(nodata, dtype=dtype))
    np.testing.assert_array_equal(back, expected)
    assert masked[~valid].all()
    assert {**tags, "REFDIFF_COMPLETE": "1"}.items() <= found_tags.items()
    assert read_completion_tags(out) == found_tags
    assert litter(tmp_path) == []


@settings(max_examples=12)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    bands=st.integers(1, 3),
    dtype=st.sampled_from(["uint8", "int16", "float32"]),
)
def test_any_small_shape_round_trips_exactly(
    tmp_path_factory: pytest.TempPathFactory, height: int, width: int, bands: int, dtype: str
) -> None:
    folder = tmp_path_factory.mktemp("shape")
    data = noise((bands, height, width), dtype, seed=height * 100 + width)
    out = write_all(folder / "small.tif", data, block_px=32)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), data)
        block_h, block_w = src.block_shapes[0]
    assert block_h % 16 == 0
    assert block_w % 16 == 0
    assert block_h == min(32, -(-height // 16) * 16)
    assert block_w == min(32, -(-width // 16) * 16)


def test_each_block_is_written_once_like_a_single_write(tmp_path: Path) -> None:
    data = noise((3, 600, 520))
    out = write_all(tmp_path / "strips.tif", data)
    options = profiles.creation_profile("gtiff", dtype="uint8", width=520, height=600, count=3)
    reference = tmp_path / "reference.tif"
    with rasterio.open(
        reference, "w", driver="GTiff", width=520, height=600, count=3, dtype="uint8",
        crs="EPSG:32633", transform=ROTATED, nodata=0, **options,
    ) as dst:  # fmt: skip
        dst.write(data)
    assert abs(out.stat().st_size - reference.stat().st_size) <= 0.01 * reference.stat().st_size
    again = write_all(tmp_path / "again.tif", data)
    assert sha256(again) == sha256(out)  # same inputs, same bytes (batch idempotency)


def test_user_creation_options_override_the_profile(tmp_path: Path) -> None:
    data = noise((1, 100, 100))
    co = ["compress=deflate", "BLOCKXSIZE=32", "BLOCKYSIZE=48", "BIGTIFF=YES"]
    out = write_all(tmp_path / "co.tif", data, creation_options=co)
    with rasterio.open(out) as src:
        assert src.compression.name.upper() == "DEFLATE"
        assert src.block_shapes[0] == (48, 32)
        np.testing.assert_array_equal(src.read(), data)
    assert out.read_bytes()[:4] == b"II+\x00"  # BigTIFF magic 43


def test_cog_output_is_a_verified_cog_with_tags(tmp_path: Path) -> None:
    data = noise((3, 700, 600))
    out = write_all(
        tmp_path / "cog.tif", data, cog=True, tags={"A": "1"}, band_descriptions=["r", "g", "b"]
    )
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.overviews(1)
        assert src.descriptions == ("r", "g", "b")
        assert {"A": "1", "REFDIFF_COMPLETE": "1"}.items() <= src.tags().items()
        np.testing.assert_array_equal(src.read(), data)
    assert litter(tmp_path) == []


# -- preflight ---------------------------------------------------------------------------------


def test_existing_output_without_overwrite_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    before = sha256(out)
    with pytest.raises(OutputError, match="already exists") as excinfo:
        preflight_output(out, inputs=[], overwrite=False, raw_bytes=1000)
    assert "--overwrite" in str(excinfo.value.hint)
    assert excinfo.value.exit_code == 4
    with pytest.raises(OutputError, match="already exists"):
        write_all(out, noise((1, 20, 20)))
    assert sha256(out) == before
    assert litter(tmp_path) == []


def test_output_appearing_during_the_run_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    data = noise((1, 20, 20))
    with RasterWriter(out, grid_for(data), count=1, dtype="uint8", nodata=0) as writer:
        writer.write_strip(0, data)
        out.write_bytes(b"someone else's")
        with pytest.raises(OutputError, match="appeared"):
            writer.finalize({})
    assert out.read_bytes() == b"someone else's"
    assert litter(tmp_path) == []


def test_overwrite_replaces_an_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    out.write_bytes(b"old")
    preflight_output(out, inputs=[], overwrite=True, raw_bytes=1000)
    data = noise((2, 40, 40))
    write_all(out, data, overwrite=True)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), data)


@pytest.mark.parametrize("how", ["same path", "symlink", "hardlink"])
def test_output_that_is_an_input_is_refused(tmp_path: Path, how: str) -> None:
    source = tmp_path / "lr.tif"
    source.write_bytes(b"input bytes")
    out = {
        "same path": source,
        "symlink": tmp_path / "link.tif",
        "hardlink": tmp_path / "hard.tif",
    }[how]
    if how == "symlink":
        out.symlink_to(source)
    elif how == "hardlink":
        os.link(source, out)
    with pytest.raises(OutputError, match="would overwrite input"):
        preflight_output(out, inputs=[tmp_path / "other.tif", source], overwrite=True, raw_bytes=10)
    assert source.read_bytes() == b"input bytes"


def test_missing_output_folder_is_refused_and_not_created(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "out.tif"
    with pytest.raises(OutputError, match="does not exist; create it first"):
        preflight_output(out, inputs=[], overwrite=False, raw_bytes=10)
    with pytest.raises(OutputError):
        write_all(out, noise((1, 16, 16)))
    assert not out.parent.exists()


def test_unwritable_output_folder_is_refused(
    tmp_path: Path, tmpfs: Callable[[str, str], Path]
) -> None:
    if os.geteuid() == 0:
        folder = tmpfs("readonly", "ro,size=1m")  # root ignores permission bits
    else:
        folder = tmp_path / "readonly"
        folder.mkdir(mode=0o555)
    out = folder / "out.tif"
    with pytest.raises(OutputError, match="not writable"):
        preflight_output(out, inputs=[], overwrite=False, raw_bytes=10)
    with pytest.raises(OutputError, match="lock file"):
        write_all(out, noise((1, 16, 16)))
    assert list(folder.iterdir()) == []


def test_free_space_below_a_tenth_fails_and_below_raw_warns(
    tmpfs: Callable[[str, str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmpfs("small", "size=1m")
    with pytest.raises(OutputError, match="not enough free space"):
        preflight_output(folder / "out.tif", inputs=[], overwrite=False, raw_bytes=100 * 2**20)
    with caplog.at_level(logging.WARNING, logger="refdiff_cli.geo.preflight"):
        preflight_output(folder / "out.tif", inputs=[], overwrite=False, raw_bytes=4 * 2**20)
    assert "compresses well" in caplog.text
    assert list(folder.iterdir()) == []


# -- exceptions, locks, faults -----------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [ValueError("engine bug"), KeyboardInterrupt(), Interrupted("SIGTERM", 143)]
)
def test_exception_in_the_with_block_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "out.tif"
    data = noise((3, 512, 300))
    seen: list[bool] = []

    def fail_midway() -> None:
        with RasterWriter(out, grid_for(data), count=3, dtype="uint8", nodata=0) as writer:
            writer.write_strip(0, data[:, :256])
            seen.extend([writer.temp_path.exists(), writer.lock_path.exists()])
            raise error

    with pytest.raises(type(error)):
        fail_midway()
    assert seen == [True, True]
    assert not out.exists()
    assert litter(tmp_path) == []
    write_all(out, data)  # the lock was released
    assert read_completion_tags(out) is not None


def test_before_publish_can_abort_the_publish(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    data = noise((1, 40, 40))

    def input_changed() -> None:
        raise InputError("lr.tif changed during the run")

    with pytest.raises(InputError, match="changed during the run"):
        write_all(out, data, before_publish=input_changed)
    assert not out.exists()
    assert litter(tmp_path) == []


def test_leaving_without_finalize_is_a_bug_and_publishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    data = noise((1, 40, 40))

    def forget_finalize() -> None:
        with RasterWriter(out, grid_for(data), count=1, dtype="uint8", nodata=0) as writer:
            writer.write_strip(0, data)

    with pytest.raises(RuntimeError, match="without finalize"):
        forget_finalize()
    assert not out.exists()
    assert litter(tmp_path) == []


def test_write_strip_rejects_wrong_dtype_unaligned_rows_and_rewrites(tmp_path: Path) -> None:
    data = noise((1, 64, 40))
    out = tmp_path / "out.tif"
    with RasterWriter(out, grid_for(data), count=1, dtype="uint8", nodata=0, block_px=16) as writer:
        assert writer.block_rows == 16
        with pytest.raises(TypeError, match="cast first"):
            writer.write_strip(0, data[:, :16].astype(np.float32))
        with pytest.raises(ValueError, match="whole blocks"):
            writer.write_strip(8, data[:, 8:24])
        writer.write_strip(0, data[:, :32])
        with pytest.raises(ValueError, match="overlap"):
            writer.write_strip(16, data[:, 16:32])
        with pytest.raises(RuntimeError, match="before all 64 rows"):
            writer.finalize({})
        writer.write_strip(32, data[:, 32:])
        writer.finalize({})
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), data)


def test_finalize_rejects_reserved_or_malformed_tags(tmp_path: Path) -> None:
    data = noise((1, 16, 16))
    cases: list[Any] = [{"REFDIFF_COMPLETE": "1"}, {"BAD=NAME": "x"}, {"N": 3}]
    for tags in cases:
        with pytest.raises(ValueError, match="invalid tags"):
            write_all(tmp_path / "o.tif", data, tags=tags)
        assert litter(tmp_path) == []


def test_invalid_nodata_for_the_dtype_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--nodata 256"):
        RasterWriter(
            tmp_path / "o.tif", grid_for(noise((1, 4, 4))), count=1, dtype="uint8", nodata=256
        )


def test_second_writer_on_a_locked_output_names_the_pid(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    data = noise((1, 32, 32))
    with RasterWriter(out, grid_for(data), count=1, dtype="uint8", nodata=0) as first:
        with pytest.raises(OutputError, match=rf"being written by PID {os.getpid()} \(lock "):
            write_all(out, data)
        assert first.temp_path.exists()  # the refused writer removed nothing of the holder's
        first.write_strip(0, data)
        first.finalize({})
    assert read_completion_tags(out) is not None


def test_lock_of_a_sigkilled_holder_is_taken_and_its_temp_removed(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    holder = child(
        """
        with RasterWriter(out, grid, count=3, dtype="uint8", nodata=0) as w:
            w.write_strip(0, data[:, : w.block_rows])
            print(w.temp_path, flush=True)
            time.sleep(60)
        """,
        out,
    )
    try:
        assert holder.stdout is not None
        stale = Path(holder.stdout.readline().strip())
        assert stale.exists(), holder.stderr.read() if holder.stderr else ""
        with pytest.raises(OutputError, match=rf"PID {holder.pid} "):
            write_all(out, noise((1, 16, 16)))
    finally:
        holder.kill()
        holder.communicate()
    data = noise((3, 64, 64))
    write_all(out, data)
    assert not stale.exists()
    assert litter(tmp_path) == []


def test_disk_full_under_rlimit_fsize_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "big.tif"
    proc = child(
        """
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, hard))
        try:
            with RasterWriter(out, grid, count=3, dtype="uint8", nodata=0) as w:
                for row in range(0, 1024, w.block_rows):
                    w.write_strip(row, data[:, row : row + w.block_rows])
                w.finalize({})
        except OutputError as exc:
            print(json.dumps({"error": exc.message, "exit": exc.exit_code}))
        """,
        out,
    )
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert f"file size limit reached writing {out}" in result["error"]
    assert result["exit"] == 4
    assert not out.exists()
    assert litter(tmp_path) == []


def test_tmpfs_full_is_caught(tmpfs: Callable[[str, str], Path]) -> None:
    folder = tmpfs("full", "size=2m")
    data = noise((3, 1024, 1024))  # 3 MiB of incompressible bytes; GDAL caches them until close
    out = folder / "out.tif"

    def write_incompressible() -> None:
        with RasterWriter(out, grid_for(data), count=3, dtype="uint8", nodata=0) as writer:
            for row in range(0, 1024, writer.block_rows):
                writer.write_strip(row, data[:, row : row + writer.block_rows])
            writer.finalize({})

    # libtiff may report the failed writes while the strips go in, or only at close.
    with pytest.raises(OutputError, match=f"disk full: no space left in {folder}"):
        write_incompressible()
    assert list(folder.iterdir()) == []


def test_verification_catches_a_temp_file_corrupted_after_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = verify.verify_raster

    def truncate_then_verify(path: Path, **kwargs: Any) -> dict[str, str]:
        os.truncate(path, path.stat().st_size // 2)
        return original(path, **kwargs)

    monkeypatch.setattr(verify, "verify_raster", truncate_then_verify)
    out = tmp_path / "out.tif"
    with pytest.raises(OutputError, match="was not published"):
        write_all(out, noise((3, 512, 512)))
    assert not out.exists()
    assert litter(tmp_path) == []


def test_verify_raster_compares_strip_checksums_and_completion(tmp_path: Path) -> None:
    data = noise((1, 40, 40))
    out = write_all(tmp_path / "out.tif", data)
    assert verify.verify_raster(out)["REFDIFF_COMPLETE"] == "1"
    with pytest.raises(OutputError, match="read back differently"):
        verify.verify_raster(out, strips={0: (40, 12345)})
    with pytest.raises(OutputError, match="size 40x40, expected 41x40"):
        verify.verify_raster(
            out, grid=Grid(crs="EPSG:32633", transform=ROTATED, width=41, height=40)
        )
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
        crs="EPSG:32633", transform=ROTATED,
    ) as dst:  # fmt: skip
        dst.write(data[:, :8, :8])
    with pytest.raises(OutputError, match="REFDIFF_COMPLETE"):
        verify.verify_raster(plain)


def test_temp_file_is_hidden_and_in_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "scene.tif"
    data = noise((1, 16, 16))
    with RasterWriter(out, grid_for(data), count=1, dtype="uint8", nodata=0) as writer:
        temp = writer.temp_path
        assert os.path.dirname(temp) == os.path.dirname(out.absolute())
        assert temp.name.startswith(".scene.tif.refdiff-")
        assert temp.name.endswith(".partial")
        assert not temp.name.endswith(".tif")
        assert writer.lock_path.read_text().strip() == str(os.getpid())
        writer.write_strip(0, data)
        writer.finalize({})
    assert not temp.exists()


def test_read_completion_tags_rejects_missing_unreadable_and_incomplete(tmp_path: Path) -> None:
    assert read_completion_tags(tmp_path / "missing.tif") is None
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all")
    assert read_completion_tags(garbage) is None
    incomplete = tmp_path / "incomplete.tif"
    with rasterio.open(
        incomplete, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
        crs="EPSG:32633", transform=ROTATED,
    ) as dst:  # fmt: skip
        dst.write(np.zeros((1, 8, 8), dtype=np.uint8))
        dst.update_tags(REFDIFF_COMPLETE="0")
    assert read_completion_tags(incomplete) is None


# -- profiles ----------------------------------------------------------------------------------


def test_bigtiff_option_switches_to_yes_below_the_classic_limit() -> None:
    assert profiles.bigtiff_option(0) == "IF_SAFER"
    assert profiles.bigtiff_option(2**32 - 2**29) == "IF_SAFER"
    assert profiles.bigtiff_option(2**32 - 2**20) == "YES"
    assert profiles.bigtiff_option(70_000 * 70_000 * 3) == "YES"
    with pytest.raises(ValueError, match=">= 0"):
        profiles.bigtiff_option(-1)


@given(raw=st.integers(0, 2**40))
def test_bigtiff_option_is_monotonic(raw: int) -> None:
    if profiles.bigtiff_option(raw) == "YES":
        assert profiles.bigtiff_option(raw + 1) == "YES"
    else:
        assert raw < 2**32


def test_creation_profiles_per_dtype_and_size() -> None:
    gtiff = profiles.creation_profile("gtiff", dtype="float32", width=1000, height=20, count=3)
    assert gtiff["PREDICTOR"] == "3"
    assert gtiff["TILED"] == "YES"
    assert (gtiff["BLOCKXSIZE"], gtiff["BLOCKYSIZE"]) == ("256", "32")
    assert gtiff["COMPRESS"] in ("ZSTD", "DEFLATE")
    big = profiles.creation_profile("gtiff", dtype="uint16", width=40_000, height=40_000, count=3)
    assert big["PREDICTOR"] == "2"
    assert big["BIGTIFF"] == "YES"
    cog = profiles.creation_profile("cog", dtype="uint8", width=100, height=100, count=1)
    assert cog["OVERVIEWS"] == "AUTO"
    assert "TILED" not in cog
    with pytest.raises(ConfigError, match="multiple of 16"):
        profiles.block_edge(100, 100)


def test_parse_creation_options() -> None:
    parsed = profiles.parse_creation_options(["compress=lzw", "ZLEVEL=9", "COMPRESS=Deflate"])
    assert parsed == {"COMPRESS": "Deflate", "ZLEVEL": "9"}
    merged = profiles.merge_options({"COMPRESS": "ZSTD", "TILED": "YES"}, parsed)
    assert merged == {"COMPRESS": "Deflate", "TILED": "YES", "ZLEVEL": "9"}
    for bad in ["x", "=5", "NAME WITH SPACE=1"]:
        with pytest.raises(ConfigError, match="--co expects NAME=VALUE") as excinfo:
            profiles.parse_creation_options([bad])
        assert excinfo.value.exit_code == 2
        assert repr(bad) in excinfo.value.message
