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
#: Memory of the time-left estimate's rate, as a fraction of the run's units ...
TIME_LEFT_MEMORY_FRACTION = 0.1
#: ... and at least this many units.
TIME_LEFT_MEMORY_UNITS = 10


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


class TimeLeft:
    """Smoothed time left of a run of ``total`` units, from (clock, units done) reports.

    The rate in seconds per unit is the mean over every unit since the first report (a
    resumed run's earlier units do not count) until a tenth of the run (at least 10 units)
    is done; from then on an exponentially weighted mean whose memory is that many units,
    each report weighted by the units it covers. One slow or fast batch moves the estimate
    by its share of that memory, not by its own rate: per-batch times that jitter 6x move
    the estimate by about 10 %, and a run whose speed drifts is followed within a tenth of
    it.

    Args:
        total: units of the run (> 0).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.memory = max(TIME_LEFT_MEMORY_UNITS, TIME_LEFT_MEMORY_FRACTION * total)
        self._origin: int | None = None
        self._last: tuple[float, int] | None = None
        self.rate: float | None = None  # seconds per unit

    def update(self, now: float, done: int) -> float | None:
        """Take a report (``now`` in seconds, monotonic); return the seconds left or None.

        None until a rate is measured: the first report only sets the origin.
        """
        if self._last is None or self._origin is None:
            self._origin, self._last = done, (now, done)
            return None
        last_time, last_done = self._last
        if done > last_done:
            units = done - last_done
            rate = (now - last_time) / units
            weight = max(units / (done - self._origin), 1.0 - math.exp(-units / self.memory))
            self.rate = rate if self.rate is None else self.rate + weight * (rate - self.rate)
            self._last = (now, done)
        if self.rate is None:
            return None
        return self.rate * max(self.total - done, 0)


class ProgressRenderer:
    """Turns tool events into a tqdm bar (terminal) or occasional plain lines (no terminal)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = stderr_is_terminal()
        self._bar: tqdm[Any] | None = None
        self._last_line = 0.0
        self._started = 0.0
        self._time_left: TimeLeft | None = None

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if isinstance(event, Started):
            self.close()
            self._started = time.monotonic()
            self._last_line = 0.0
            self._time_left = TimeLeft(event.total)
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
            if self._time_left is None or self._time_left.total != event.total:
                self._time_left = TimeLeft(event.total)
            # A resumed run starts part-way: its rate counts from the first report on.
            left = self._time_left.update(time.monotonic(), event.done)
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
                if left is not None and event.done < event.total:  # none before a rate
                    line += f", about {left:.0f} s left"
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
            _tiles(r),
            f"{100 * r.ref_coverage:.1f} %" if r else "",
            f"{item.seconds:.1f}",
        )
    console.print(table)
    for item in report.items:
        if item.status == "dry-run" and item.report is not None:
            console.print(_plan_line(item.report))
    counts = report.to_dict()["counts"]
    console.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))


def _tiles(r: Any) -> str:
    """The tiles column: "16", "16 (8 resumed)" after an interrupted run, "" without a report."""
    if r is None:
        return ""
    return f"{r.tiles} ({r.resumed_tiles} resumed)" if r.resumed_tiles else str(r.tiles)


def _plan_line(r: Any) -> str:
    """What a dry run found for one output: grid, tiles, sizes, memory."""
    a, b, c, d, e, f = r.transform
    return (
        f"{r.output}: {r.width} x {r.height} px x {r.bands} bands {r.dtype}, {r.crs}, "
        f"pixel {math.hypot(a, d):g} x {math.hypot(b, e):g}, origin ({c:.3f}, {f:.3f}); "
        f"{r.tiles} tile(s), {r.tile_px} px with {r.overlap_px} px overlap; "
        f"{_size(r.output_bytes_raw)} uncompressed, {_size(r.free_bytes)} free; "
        f"peak memory about {_size(r.peak_memory_estimate_bytes)}" + _time_line(r.time_estimate)
    )


def _time_line(estimate: dict[str, Any] | None) -> str:
    """``; expected run time about 3 min (a batch of 4 tiles took 2.1 s on cpu)``, or ""."""
    if not estimate:
        return ""
    tiles = estimate["batch_tiles"]
    return (
        f"; expected run time about {duration(estimate['seconds'])} (a batch of {tiles} "
        f"tile{'s' if tiles != 1 else ''} took {estimate['batch_seconds']:.1f} s on "
        f"{estimate['device']}; {estimate['batches']} batch(es))"
    )


def duration(seconds: float) -> str:
    """Seconds as people read them: ``45 s``, ``12 min``, ``3 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


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
    for kind, scores in (report.get("mask_scores") or {}).items():
        name = "estimated mask" if kind == "estimated" else "change vector analysis"
        console.print(
            f"{name} vs labels: precision {scores['precision']:.3f}, recall "
            f"{scores['recall']:.3f}, F1 {scores['f1']:.3f}, IoU {scores['iou']:.3f}"
        )
    for key in ("csv", "figure"):
        written = report.get(key)
        if written:
            console.print(f"{key}: {written['path'] if isinstance(written, dict) else written}")
