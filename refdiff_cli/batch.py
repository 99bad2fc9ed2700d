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
from refdiff_cli.engines import Engine
from refdiff_cli.errors import (
    EXIT_OK,
    EXIT_PARTIAL_BATCH,
    InputError,
    Interrupted,
    OutputError,
    RefdiffError,
)
from refdiff_cli.events import EventHandler, ignore_event
from refdiff_cli.geo.write import check_output_name, read_completion_tags
from refdiff_cli.upscale import UpscaleJob, UpscaleReport, params_hash, upscale

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ItemResult:
    """Outcome of one job: ``status`` is "written", "dry-run", "skipped" or "failed"."""

    lr: Path
    output: Path
    status: str
    seconds: float
    exit_code: int = EXIT_OK
    error_class: str | None = None
    message: str | None = None
    report: UpscaleReport | None = None

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


def jobs_from_list(path: Path, *, output_dir: Path | None) -> list[UpscaleJob]:
    """Read a CSV list file with columns ``lr,ref,mask[,output]`` (paths relative to the file).

    Rows without an output column value need ``output_dir``; they are written as
    ``<output_dir>/<lr stem>_sr.tif``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read list file {path}: {exc.strerror}") from exc
    rows = list(csv.DictReader(line for line in text.splitlines() if line.strip()))
    if not rows:
        raise InputError(f"list file {path} has no rows", hint="first line: lr,ref,mask,output")
    missing = {"lr", "ref", "mask"} - set(rows[0])
    if missing:
        raise InputError(
            f"list file {path} lacks column(s) {', '.join(sorted(missing))}",
            hint="first line: lr,ref,mask,output",
        )
    base = path.parent
    jobs = []
    for number, row in enumerate(rows, start=2):
        lr = base / row["lr"].strip()
        if row.get("output"):
            output = base / row["output"].strip()
        elif output_dir is not None:
            output = output_dir / f"{lr.stem}_sr.tif"
        else:
            raise InputError(
                f"list file {path}, line {number}: no output given",
                hint="add an output column or pass -o DIR",
            )
        jobs.append(
            UpscaleJob(
                lr=lr, ref=base / row["ref"].strip(), mask=base / row["mask"].strip(), output=output
            )
        )
    return jobs


def run_batch(
    jobs: Sequence[UpscaleJob],
    engine: Engine,
    options: UpscaleOptions,
    *,
    on_event: EventHandler = ignore_event,
) -> BatchReport:
    """Run every job; a failing job is recorded and the next one starts.

    Interruptions (Ctrl-C, SIGTERM) stop the whole batch: they are re-raised after the
    current job's temporary output has been removed by the writer.
    """
    outputs = [job.output.resolve() for job in jobs]
    duplicates = {str(o) for o in outputs if outputs.count(o) > 1}
    if duplicates:
        raise InputError(f"several jobs write the same output: {', '.join(sorted(duplicates))}")
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
            report = upscale(job, engine, options, on_event=on_event)
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
            logger.log(logging.ERROR if len(jobs) > 1 else logging.DEBUG, "%s: %s", job.lr, exc)
            results.append(
                ItemResult(
                    lr=job.lr,
                    output=job.output,
                    status="failed",
                    seconds=time.monotonic() - started,
                    exit_code=exc.exit_code,
                    error_class=type(exc).__name__,
                    message=str(exc),
                )
            )
    return BatchReport(items=tuple(results))


def _already_done(job: UpscaleJob, engine: Engine, options: UpscaleOptions) -> bool:
    """True when the output is complete and was made with the same parameters and inputs.

    A complete output with other parameters is an error: it is neither silently kept nor
    silently replaced.
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
    return True
