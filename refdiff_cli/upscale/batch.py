"""Run upscale over several jobs with one loaded engine: skip finished ones, survive failures."""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.errors import (
    EXIT_OK,
    EXIT_PARTIAL_BATCH,
    ConfigError,
    InputError,
    Interrupted,
    OutputError,
    RefdiffError,
)
from refdiff_cli.events import EventHandler, ignore_event
from refdiff_cli.geo.preflight import check_output_name, preflight_output
from refdiff_cli.geo.verify import read_completion_tags, verify_raster
from refdiff_cli.upscale.distributed import SINGLE, TileRows, World, gathered, my_share
from refdiff_cli.upscale.engines import Engine
from refdiff_cli.upscale.job import UpscaleJob, UpscaleReport
from refdiff_cli.upscale.provenance import params_hash
from refdiff_cli.upscale.run import upscale

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ItemResult:
    """Outcome of one job: ``status`` is "written", "dry-run", "skipped", "failed" or, on a
    torchrun rank other than 0, "shared" (tile rows computed for rank 0, which writes).

    ``error`` is the exception of a failed job (for ``api.upscale`` to raise; not in JSON).
    """

    lr: Path
    output: Path
    status: str
    seconds: float
    exit_code: int = EXIT_OK
    error_class: str | None = None
    message: str | None = None
    report: UpscaleReport | None = None
    error: RefdiffError | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "lr": str(self.lr),
            "output": str(self.output),
            "status": self.status,
            "seconds": round(self.seconds, 3),
        }
        if self.status == "failed":
            data.update(exit_code=self.exit_code, error=self.error_class, message=self.message)
        if self.report is not None:
            data["report"] = self.report.to_dict()
        return data


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchReport:
    """All item results; ``exit_code`` is 0 when none failed, else 5 (or the single item's code)."""

    items: tuple[ItemResult, ...]

    @property
    def failed(self) -> tuple[ItemResult, ...]:
        return tuple(item for item in self.items if item.status == "failed")

    @property
    def exit_code(self) -> int:
        failed = self.failed
        if not failed:
            return EXIT_OK
        if len(self.items) == 1:
            return failed[0].exit_code
        return EXIT_PARTIAL_BATCH

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return {
            "exit_code": self.exit_code,
            "counts": counts,
            "items": [item.to_dict() for item in self.items],
        }


#: Columns of an upscale list file; ``output`` is optional.
LIST_COLUMNS = ("lr", "ref")  # required; "mask" and "output" are optional
_LIST_HINT = "first line: lr,ref[,mask][,output]; one row per LR image"


def jobs_from_list(path: Path, *, output_dir: Path | None) -> list[UpscaleJob]:
    """Read a CSV list file with columns ``lr,ref[,mask][,output]``.

    A row without a mask (no column, or an empty cell) has its change mask estimated.

    Input paths are relative to the list file's folder. An ``output`` value is relative to
    ``output_dir`` (``-o DIR``) when given, else to the list file's folder; rows without one
    need ``output_dir`` and are named by :func:`output_names`. Excel's UTF-8 with a byte order
    mark and CRLF line ends are read as plain UTF-8.

    Raises:
        InputError: unreadable or non-UTF-8 file, no rows, missing columns, a row with too few
            or too many cells or an empty cell (naming the line), no output for a row (exit 3).
        OutputError: ``output_dir`` is not an existing folder (exit 4).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read list file {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"list file {path} is not UTF-8 text (byte {exc.start} is "
            f"{data[exc.start : exc.start + 1]!r})",
            hint="save it as CSV UTF-8",
        ) from exc
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise InputError(f"list file {path} has no rows", hint=_LIST_HINT)
    header = [name.strip().lower() for name in _cells(lines[0][1])]
    missing = [name for name in LIST_COLUMNS if name not in header]
    if missing:
        raise InputError(
            f"list file {path} lacks column(s) {', '.join(missing)} (found: {', '.join(header)})",
            hint=_LIST_HINT,
        )
    if output_dir is not None and not output_dir.is_dir():
        raise OutputError(
            f"-o {output_dir}: with --from-list, -o must be an existing folder",
            hint=f"mkdir -p {output_dir}",
        )
    base = path.parent
    rows: list[tuple[int, dict[str, str]]] = []
    for number, line in lines[1:]:
        cells = _cells(line)
        if len(cells) != len(header):
            raise InputError(
                f"list file {path}, line {number}: {len(cells)} cell(s), the header has "
                f"{len(header)} ({', '.join(header)})",
                hint="quote paths with commas in double quotes",
            )
        row = {name: cell.strip() for name, cell in zip(header, cells, strict=True)}
        empty = [name for name in LIST_COLUMNS if not row[name]]
        if empty:
            raise InputError(f"list file {path}, line {number}: empty {', '.join(empty)}")
        rows.append((number, row))
    if not rows:
        raise InputError(f"list file {path} has a header but no rows", hint=_LIST_HINT)
    unnamed = [base / row["lr"] for _, row in rows if not row.get("output")]
    if unnamed and output_dir is None:
        number = next(n for n, row in rows if not row.get("output"))
        raise InputError(
            f"list file {path}, line {number}: no output given",
            hint="add an output column or pass -o DIR",
        )
    named = iter(output_names(unnamed, output_dir) if output_dir is not None else [])
    jobs = []
    for _, row in rows:
        output = (output_dir or base) / row["output"] if row.get("output") else next(named)
        mask = base / row["mask"] if row.get("mask") else None
        jobs.append(
            UpscaleJob(lr=base / row["lr"], ref=base / row["ref"], mask=mask, output=output)
        )
    return jobs


def _cells(line: str) -> list[str]:
    """The cells of one CSV line (quotes and commas inside them as CSV has them)."""
    return next(csv.reader([line]), [])


def output_names(lrs: Sequence[Path], folder: Path) -> list[Path]:
    """``<folder>/<lr stem>_sr.tif`` per LR; LRs of the same name in different folders get
    their folder's name in front (``a/x.tif``, ``b/x.tif`` -> ``a_x_sr.tif``, ``b_x_sr.tif``).

    Raises:
        InputError: two LRs would still get one name (the same file listed twice, or folders
            of the same name).
    """
    stems = [lr.stem for lr in lrs]
    names = [
        f"{lr.absolute().parent.name}_{lr.stem}_sr.tif"
        if stems.count(lr.stem) > 1
        else f"{lr.stem}_sr.tif"
        for lr in lrs
    ]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        sources = [str(lr) for lr, name in zip(lrs, names, strict=True) if name == clashes[0]]
        raise InputError(
            f"{', '.join(sources)} would all be written to {folder / clashes[0]}",
            hint="give each row an output column (or rename the LR files)",
        )
    return [folder / name for name in names]


def check_layer_outputs(output: Path, **layers: Path | None) -> None:
    """``--mask-out`` / ``--trust-out`` (keyword ``mask_out`` / ``trust_out``) must be valid
    file names, other than the output's and each other's; ConfigError else."""
    taken = {output.resolve(): "the output"}
    for name, path in layers.items():
        if path is None:
            continue
        option = "--" + name.replace("_", "-")
        check_output_name(path)
        clash = taken.get(path.resolve())
        if clash is not None:
            raise ConfigError(f"{option} {path} is {clash} itself; name another file")
        taken[path.resolve()] = option


def run_batch(
    jobs: Sequence[UpscaleJob],
    engine: Engine,
    options: UpscaleOptions,
    *,
    on_event: EventHandler = ignore_event,
    world: World = SINGLE,
) -> BatchReport:
    """Run every job; a failing job is recorded and the next one starts.

    Interruptions (Ctrl-C, SIGTERM) stop the whole batch: they are re-raised after the
    current job's temporary output has been removed by the writer.

    Under torchrun (``world`` of several ranks, process group joined) several jobs are dealt
    out among the ranks and rank 0 reports them all (the other ranks' reports are empty); one
    job is shared by tile rows (the other ranks' item status is "shared").
    """
    outputs = [job.output.resolve() for job in jobs]
    duplicates = {str(o) for o in outputs if outputs.count(o) > 1}
    if duplicates:
        raise InputError(f"several jobs write the same output: {', '.join(sorted(duplicates))}")
    if world.size > 1 and len(jobs) > 1:
        mine = _run_jobs(my_share(jobs, world), engine, options, on_event, several=True)
        # The other ranks report nothing (exit 0): a failure of theirs is rank 0's to report,
        # and a rank that exits non-zero makes torchrun stop the others, rank 0 included.
        return BatchReport(items=tuple(gathered(mine, len(jobs), world) or ()))
    rows = TileRows(world) if world.size > 1 else None
    several = len(jobs) > 1
    return BatchReport(
        items=tuple(_run_jobs(jobs, engine, options, on_event, several=several, rows=rows))
    )


def _run_jobs(
    jobs: Sequence[UpscaleJob],
    engine: Engine,
    options: UpscaleOptions,
    on_event: EventHandler,
    *,
    several: bool,
    rows: TileRows | None = None,
) -> list[ItemResult]:
    """The results of the jobs, one after the other (``run_batch``); ``several``: the jobs are
    (part of) a batch, whose failures are logged as they happen."""
    results = []
    for job in jobs:
        started = time.monotonic()
        try:
            check_output_name(job.output)
            if options.skip_existing and _already_done(job, engine, options):
                logger.info("skipping %s: already complete with the same parameters", job.output)
                results.append(
                    ItemResult(lr=job.lr, output=job.output, status="skipped", seconds=0.0)
                )
                continue
            # The output's place first: a clash must not wait for the inputs to be decoded.
            preflight_output(
                job.output,
                inputs=[p for p in (job.lr, job.ref, job.mask) if p is not None],
                overwrite=options.overwrite,
                raw_bytes=0,
            )
            report = upscale(job, engine, options, on_event=on_event, rows=rows)
            results.append(
                ItemResult(
                    lr=job.lr,
                    output=job.output,
                    status=report.status,
                    seconds=time.monotonic() - started,
                    report=report,
                )
            )
        except Interrupted:
            raise
        except RefdiffError as exc:
            # A single job's error is the run's error: the caller reports it, once.
            logger.log(logging.ERROR if several else logging.DEBUG, "%s: %s", job.lr, exc)
            results.append(
                ItemResult(
                    lr=job.lr,
                    output=job.output,
                    status="failed",
                    seconds=time.monotonic() - started,
                    exit_code=exc.exit_code,
                    error_class=type(exc).__name__,
                    message=str(exc),
                    error=exc,
                )
            )
    return results


def _already_done(job: UpscaleJob, engine: Engine, options: UpscaleOptions) -> bool:
    """True when the output is complete, intact and made with the same parameters and inputs.

    A complete output with other parameters, or one whose blocks no longer decode, is an
    error: it is neither silently kept nor silently replaced.
    """
    if not job.output.exists():
        return False
    tags = read_completion_tags(job.output)
    if tags is None:
        raise OutputError(
            f"{job.output} exists but is not a complete refdiff output",
            hint="use --overwrite to replace it",
        )
    if tags.get("REFDIFF_PARAMS_HASH") != params_hash(job, engine, options):
        raise OutputError(
            f"{job.output} exists with different parameters or inputs",
            hint="use --overwrite to replace it",
        )
    try:  # complete means intact too: every block (and overview) must decode
        verify_raster(job.output)
    except OutputError as exc:
        raise OutputError(
            f"{job.output} is marked complete but does not read back: {exc.message}",
            hint="use --overwrite to replace it",
        ) from exc
    return True
