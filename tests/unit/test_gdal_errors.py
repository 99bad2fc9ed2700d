"""gdal_io: which GDAL failures belong to a write (the read-ahead thread reads meanwhile)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from refdiff_cli.errors import OutputError
from refdiff_cli.geo.gdal_errors import GDAL_ERROR_LOGGER, GDAL_ERROR_TEXT, gdal_io


def _signal_gdal_failure(message: str) -> None:
    """What rasterio's error handler logs for a CE_Failure, in the calling thread."""
    logging.getLogger(GDAL_ERROR_LOGGER).info("%s: err_no=1, msg=%r", GDAL_ERROR_TEXT, message)


def test_a_gdal_failure_during_the_write_fails_it(tmp_path: Path) -> None:
    failure = r"sr\.tif: writing rows 0-255 failed: .*block flush failed"
    with (
        pytest.raises(OutputError, match=failure),
        gdal_io(tmp_path / "sr.tif", "writing rows 0-255"),
    ):
        _signal_gdal_failure("block flush failed")


def test_a_failure_in_another_thread_is_not_the_writes(tmp_path: Path) -> None:
    """A read failing in the read-ahead thread is that read's error (raised there), not a
    failed write of the output that happened to be running at the time."""
    inside, logged = threading.Event(), threading.Event()

    def read_in_another_thread() -> None:
        inside.wait(timeout=10)
        _signal_gdal_failure("lr.tif: TIFFReadEncodedTile() failed")
        logged.set()

    reader = threading.Thread(target=read_in_another_thread)
    reader.start()
    with gdal_io(tmp_path / "sr.tif", "writing rows 0-255"):
        inside.set()
        assert logged.wait(timeout=10)
    reader.join()
