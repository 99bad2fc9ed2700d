"""Terminal rendering: logging set-up, progress display and JSON on stdout (UI layer only)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from tqdm import tqdm

from refdiff_cli.events import Event, Progress, Started

#: Seconds between plain progress lines when stderr is not a terminal (cron, CI, pipes).
PLAIN_PROGRESS_INTERVAL_S = 10.0


def stderr_is_terminal() -> bool:
    """True when progress bars and colours are appropriate on stderr."""
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def configure_logging(verbosity: int) -> None:
    """Send refdiff's log records to stderr: rich on a terminal, plain lines otherwise.

    Args:
        verbosity: -1 quiet (errors only), 0 normal (warnings and info), 1+ debug.
    """
    level = {-1: logging.ERROR, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler: logging.Handler
    if stderr_is_terminal():
        console = Console(stderr=True, no_color="NO_COLOR" in os.environ)
        handler = RichHandler(console=console, show_time=False, show_path=verbosity > 0)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("refdiff: %(levelname)s: %(message)s"))
    package_logger = logging.getLogger("refdiff_cli")
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(level)
    package_logger.propagate = False


class ProgressRenderer:
    """Turns tool events into a tqdm bar (terminal) or occasional plain lines (no terminal)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = stderr_is_terminal()
        self._bar: tqdm[Any] | None = None
        self._last_line = 0.0
        self._started = 0.0
        self._origin: tuple[float, int] | None = None  # (time, done) of the first report

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if isinstance(event, Started):
            self.close()
            self._started = time.monotonic()
            self._last_line = 0.0
            self._origin = None
            if self.interactive:
                self._bar = tqdm(
                    total=event.total,
                    desc=event.task,
                    unit=event.unit,
                    file=sys.stderr,
                    leave=False,
                )
            else:
                self._plain(f"{event.task}: 0/{event.total} {event.unit}s")
        elif isinstance(event, Progress):
            if self._origin is None:  # a resumed run starts part-way: rate from here on
                self._origin = (time.monotonic(), event.done)
            if self._bar is not None:
                self._bar.update(event.done - self._bar.n)
            elif time.monotonic() - self._last_line >= PLAIN_PROGRESS_INTERVAL_S or (
                event.done == event.total
            ):
                now = time.monotonic()
                line = (
                    f"{event.task}: {event.done}/{event.total} {event.unit}s, "
                    f"{now - self._started:.0f} s elapsed"
                )
                origin_time, origin_done = self._origin
                if event.done > origin_done:  # no rate yet at the first report
                    rate = (now - origin_time) / (event.done - origin_done)
                    line += f", about {rate * (event.total - event.done):.0f} s left"
                self._plain(line)
            if event.done == event.total:
                self.close()

    def _plain(self, line: str) -> None:
        self._last_line = time.monotonic()
        print(f"refdiff: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Remove a finished or abandoned progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Print to stdout inside; a reader that went away (``refdiff ... | head -c1``) is no error.

    stdout is then pointed at /dev/null, so the exit code still reports the work itself.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except SystemExit as exc:  # rich's Console exits 1 on a broken pipe (stdout already moved)
        if not isinstance(exc.__context__, BrokenPipeError):
            raise


def print_json(data: Any) -> None:
    """Write one JSON document to stdout (stdout carries nothing else with --json)."""
    with reader_may_leave():
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_error(message: str) -> None:
    """The last line on stderr for a failed run: what went wrong and how to fix it."""
    print(f"refdiff: error: {message}", file=sys.stderr, flush=True)


def print_batch_summary(report: Any) -> None:
    """Human summary of an upscale batch on stdout: one row per item, then the counts."""
    with reader_may_leave():
        _print_batch_summary(report)


def _print_batch_summary(report: Any) -> None:
    from rich.table import Table

    console = Console(no_color="NO_COLOR" in os.environ, highlight=False)
    table = Table(show_edge=False, pad_edge=False, box=None)
    for column in ("output", "status", "size", "tiles", "ref cover", "seconds"):
        table.add_column(column)
    for item in report.items:
        r = item.report
        size = f"{r.width}x{r.height}x{r.bands} {r.dtype}" if r else ""
        table.add_row(
            str(item.output),
            item.status if item.status != "failed" else f"failed ({item.error_class})",
            size,
            str(r.tiles) if r else "",
            f"{100 * r.ref_coverage:.1f} %" if r else "",
            f"{item.seconds:.1f}",
        )
    console.print(table)
    for item in report.items:
        if item.status == "dry-run" and item.report is not None:
            console.print(_plan_line(item.report))
    counts = report.to_dict()["counts"]
    console.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))


def _plan_line(r: Any) -> str:
    """What a dry run found for one output: grid, tiles, sizes, memory."""
    a, b, c, d, e, f = r.transform
    return (
        f"{r.output}: {r.width} x {r.height} px x {r.bands} bands {r.dtype}, {r.crs}, "
        f"pixel {math.hypot(a, d):g} x {math.hypot(b, e):g}, origin ({c:.3f}, {f:.3f}); "
        f"{r.tiles} tile(s), {r.tile_px} px with {r.overlap_px} px overlap; "
        f"{_size(r.output_bytes_raw)} uncompressed, {_size(r.free_bytes)} free; "
        f"peak memory about {_size(r.peak_memory_estimate_bytes)}"
    )


def _size(count: int) -> str:
    """Bytes in a readable unit (MiB below 1 GiB)."""
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


#: Metric columns of the evaluation table, in order, with their headers and formats.
_EVAL_COLUMNS = (
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("psnr_y", "PSNR-Y", "{:.2f}"),
    ("ssim_y", "SSIM-Y", "{:.4f}"),
    ("sam", "SAM", "{:.2f}"),
    ("ergas", "ERGAS", "{:.3f}"),
    ("lpips", "LPIPS", "{:.4f}"),
)


def print_evaluation(report: dict[str, Any]) -> None:
    """Human summary of ``refdiff evaluate`` on stdout: mean metrics per method and region.

    Args:
        report: ``EvalReport.to_dict()``; a metric column appears when some method defines it.
    """
    with reader_may_leave():
        _print_evaluation(report)


def _print_evaluation(report: dict[str, Any]) -> None:
    from rich.table import Table

    console = Console(no_color="NO_COLOR" in os.environ, highlight=False)
    methods: dict[str, dict[str, dict[str, Any]]] = report["methods"]
    present = [
        column
        for column in _EVAL_COLUMNS
        if any(
            region.get(column[0]) is not None
            for regions in methods.values()
            for region in regions.values()
        )
    ]
    table = Table(show_edge=False, pad_edge=False, box=None)
    for header in ("method", "region", "n", *(c[1] for c in present), "s"):
        left = header in ("method", "region")
        table.add_column(header, justify="left" if left else "right", no_wrap=True)
    details = report.get("method_details", {})
    for name, regions in methods.items():
        for i, (region, values) in enumerate(regions.items()):
            cells = [
                "" if values.get(key) is None else fmt.format(values[key])
                for key, _, fmt in present
            ]
            seconds = details.get(name, {}).get("seconds") if i == 0 else None
            table.add_row(
                name if i == 0 else "",
                region,
                str(values.get("n_images", "")),
                *cells,
                "" if seconds is None else f"{seconds:.1f}",
            )
    console.print(table)
    console.print(
        "PSNR in dB (an exact region counts as 100), SAM in degrees; n: images with pixels in "
        "the region; s: seconds the method took"
    )
    summary = (
        f"{report['n_images']} image(s) at x{report['scale']}: {report['counts']['changed']} "
        f"with changed pixels, {report['counts']['unchanged']} with unchanged pixels"
    )
    if report.get("cropped"):
        summary += f", {report['cropped']} cropped to a multiple of the scale"
    console.print(summary)
    for key in ("csv", "figure"):
        written = report.get(key)
        if written:
            console.print(f"{key}: {written['path'] if isinstance(written, dict) else written}")
