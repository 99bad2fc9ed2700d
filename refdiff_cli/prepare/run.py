"""The prepare tool: training chips (shards + manifest.json) from GeoTIFF triplets or image folders.

Per source image: HR and Ref in model space (each with its own percentiles over the whole
image, as upscale normalises an LR and a Ref), the encoded mask, validity, and for the paper
layout the stored LR (with its own percentiles). Chips of ``chip_px`` are cut every
``stride_px`` from offsets that are multiples of the scale, the last row and column flush with
the (scale-cropped) edge; an image smaller than a chip is skipped with a warning (never
padded), and chips with less than ``min_valid`` valid HR pixels are skipped and counted. The
train/val split is decided per source image by its file stem (``splits.split_of``), so no
image contributes to both. A failed run removes the shard folders it wrote; with
``overwrite`` the old chips stay until the first image that gives chips has been read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from refdiff_cli.config import to_dict
from refdiff_cli.data.normalize import Normalization
from refdiff_cli.data.synthesize import SynthesisConfig
from refdiff_cli.data.tiling import PixelWindow
from refdiff_cli.datasets.shards import MANIFEST, SHARD_RE, SPLITS, ShardWriter
from refdiff_cli.datasets.splits import split_of
from refdiff_cli.errors import ConfigError, InputError, OutputError
from refdiff_cli.events import EventHandler, Progress, Started, ignore_event
from refdiff_cli.files import file_sha256
from refdiff_cli.prepare.options import PrepareOptions
from refdiff_cli.prepare.read import OpenSource, chip_windows, open_source
from refdiff_cli.prepare.sources import SourcePlan, channel_encoding, discover

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SourceSummary:
    """What prepare did with one source image (``chips`` expected, in a dry run)."""

    name: str
    layout: str
    split: str
    shape: tuple[int, int]
    chips: int
    skipped_chips: int
    skipped: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PrepareReport:
    """The outcome of ``prepare``; ``to_dict`` is the CLI's ``--json`` summary.

    Attributes:
        output: the chips folder.
        status: "written" or "dry-run".
        sources: one summary per source image, in manifest order.
        chips: chips per split (a dry run counts every chip window).
        skipped_chips: chips dropped for too few valid HR pixels.
        skipped_images: (name, reason) of images that gave no chip.
        lr_scale: scale of the stored LR chips, or None.
        mask_encoding: the mask channel's encoding (manifest ``mask_encoding``).
        manifest: the manifest written, or None in a dry run.
        warnings: messages for the user (also logged).
    """

    output: Path
    status: Literal["written", "dry-run"]
    sources: tuple[SourceSummary, ...]
    chips: dict[str, int]
    skipped_chips: int
    skipped_images: tuple[tuple[str, str], ...]
    lr_scale: int | None
    mask_encoding: dict[str, Any]
    manifest: Path | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        data = to_dict(self)
        data["skipped_images"] = [{"name": n, "reason": r} for n, r in self.skipped_images]
        return data


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse an existing chips folder (exit 4) before anything is read or written."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"-o {output} is a file, not a chips folder", hint="choose a folder")
    if output.is_dir() and not overwrite:
        has_chips = (output / MANIFEST).exists() or any(
            SHARD_RE.match(p.name) for p in output.iterdir()
        )
        if has_chips:
            raise OutputError(
                f"chips folder {output} already has chips",
                hint="choose a new folder or pass --overwrite to replace it",
            )


@contextlib.contextmanager
def _cleanup_on_failure(output: Path) -> Iterator[None]:
    """Remove this run's shard folders (and a folder it created) when the run fails."""
    created = not output.exists()
    try:
        yield
    except BaseException:
        if output.is_dir():
            for path in output.iterdir():
                if path.is_dir() and (SHARD_RE.match(path.name) or path.name.startswith(".tmp-")):
                    shutil.rmtree(path, ignore_errors=True)
            if created and not any(output.iterdir()):
                output.rmdir()
        raise


def _entry(plan: SourcePlan, split: str, opened: OpenSource) -> dict[str, Any]:
    """The manifest's record of one source image (chip counts are added later)."""
    return {
        "name": plan.name,
        "split": split,
        "layout": plan.layout,
        "paths": {role: str(path.resolve()) for role, path in sorted(plan.paths.items())},
        "sha256": {role: file_sha256(path) for role, path in sorted(plan.paths.items())},
        "mask_encoding": plan.encoding.to_dict(),
        "synthesized": plan.synthesized,
        **opened.info,
    }


def prepare(
    srcs: Sequence[Path],
    output: Path,
    options: PrepareOptions,
    *,
    synthesis: SynthesisConfig = SynthesisConfig(),  # noqa: B008 (frozen, immutable default)
    on_event: EventHandler = ignore_event,
) -> PrepareReport:
    """Write training chips of every source image of ``srcs`` into ``output`` (see the module).

    Args:
        srcs: SRC arguments: CSV lists of GeoTIFF triplets, cd or paper folders, or (with
            ``synthesize_changes``) image folders or CSVs with an hr column.
        output: the chips folder.
        options: see ``PrepareOptions``.
        synthesis: ranges of synthesised changes.
        on_event: progress, one ``Progress`` per source image.

    Returns:
        What was written (or would be, with ``dry_run``).

    Raises:
        ConfigError: options that do not fit the sources (exit 2).
        InputError: missing or bad sources, no chip at all (exit 3).
        OutputError: ``output`` already holds chips without ``overwrite`` (exit 4, nothing
            touched), or cannot be written.
    """
    if not srcs:
        raise ConfigError("no SRC given", hint="refdiff prepare DATASET_FOLDER -o chips/")
    output = Path(output)
    _check_output(output, options.overwrite)
    norm = Normalization()
    plans = discover(
        srcs,
        layout=options.layout,
        scale=options.scale,
        bands=options.bands,
        mask_encoding=options.mask_encoding,
        mask_grid=options.mask_grid,
        percentiles=norm.percentiles,
        synthesize=options.synthesize_changes,
    )
    encoding = channel_encoding(plans)
    warnings: list[str] = []
    with_lr = [p for p in plans if "lr" in p.paths]
    lr_scale = options.scale if len(with_lr) == len(plans) else None
    if with_lr and lr_scale is None:
        warnings.append(
            f"LR images are not stored: {len(plans) - len(with_lr)} of {len(plans)} sources have "
            f"no x{options.scale} LR folder (training synthesises the LR instead)"
        )
        logger.warning("%s", warnings[-1])
    run = _Run(output=output, options=options, synthesis=synthesis, lr_scale=lr_scale)
    on_event(Started(task=output.name, total=len(plans), unit="image"))
    guard = contextlib.nullcontext() if options.dry_run else _cleanup_on_failure(output)
    with guard:
        for index, plan in enumerate(plans):
            run.source(index, plan)
            on_event(Progress(task=output.name, done=index + 1, total=len(plans), unit="image"))
        if options.dry_run:
            return run.report(encoding, warnings, manifest=None)
        if run.writer is None or not sum(run.chips.values()):
            raise InputError(
                f"no chips: none of the {len(plans)} source image(s) gave a {options.chip_px} px "
                "chip with enough valid pixels",
                hint="use a smaller --chip or a lower --min-valid, or check the inputs' nodata",
            )
        path = run.writer.finish(
            sources=run.entries,
            normalization=norm.to_dict(),
            mask_encoding=encoding,
            options=_provenance(srcs, options),
        )
    return run.report(encoding, warnings, manifest=path)


def _provenance(srcs: Sequence[Path], options: PrepareOptions) -> dict[str, Any]:
    """The resolved options that decide the chips' content (not overwrite, dry run, output)."""
    data = {k: v for k, v in to_dict(options).items() if k not in ("overwrite", "dry_run")}
    data["stride_px"] = options.stride
    data["srcs"] = [str(Path(s).resolve()) for s in srcs]
    return data


@dataclasses.dataclass(kw_only=True, slots=True)
class _Run:
    """Mutable state of one prepare: the writer (made at the first chip source) and counts."""

    output: Path
    options: PrepareOptions
    synthesis: SynthesisConfig
    lr_scale: int | None
    writer: ShardWriter | None = None
    bands: tuple[str, ...] | None = None
    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    summaries: list[SourceSummary] = dataclasses.field(default_factory=list)
    chips: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skipped_chips: int = 0
    skipped_images: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def source(self, index: int, plan: SourcePlan) -> None:
        """Open one source, cut and write (or count) its chips, record it."""
        opt = self.options
        split = split_of(plan.stem, val_fraction=opt.val_fraction, seed=opt.seed)
        with open_source(
            plan,
            scale=opt.scale,
            chip_px=opt.chip_px,
            bands=opt.bands,
            percentiles=Normalization().percentiles,
            seed=opt.seed,
            synthesis=self.synthesis,
        ) as opened:
            entry = _entry(plan, split, opened)
            self.warnings.extend(opened.info.get("warnings", ()))
            skipped: str | None = None
            written = dropped = 0
            if opened.reader is None:
                height, width = opened.shape
                skipped = (
                    f"smaller than a {opt.chip_px} px chip ({width}x{height} px usable)"
                    if min(opened.shape) < opt.chip_px
                    else "no valid pixels"
                )
                self.skipped_images.append((plan.name, skipped))
                logger.warning("%s (%s): skipped, %s", plan.name, plan.paths["hr"], skipped)
            else:
                self._check_bands(plan, opened)
                windows = chip_windows(
                    opened.shape, chip_px=opt.chip_px, stride_px=opt.stride, scale=opt.scale
                )
                if opt.dry_run:
                    written = len(windows)
                else:
                    written, dropped = self._write(index, split, opened, windows)
        self.chips[split] += written
        self.skipped_chips += dropped
        entry.update(chips=written, skipped_chips=dropped, skipped=skipped)
        self.entries.append(entry)
        self.summaries.append(
            SourceSummary(
                name=plan.name,
                layout=plan.layout,
                split=split,
                shape=opened.shape,
                chips=written,
                skipped_chips=dropped,
                skipped=skipped,
            )
        )

    def _check_bands(self, plan: SourcePlan, opened: OpenSource) -> None:
        if self.bands is None:
            self.bands = opened.band_names
        elif len(self.bands) != len(opened.band_names):
            raise InputError(
                f"{plan.name} ({plan.paths['hr']}) has {len(opened.band_names)} band(s), the "
                f"sources before it {len(self.bands)}",
                hint="select the same number of bands from every source with -b/--bidx",
            )

    def _write(
        self, index: int, split: str, opened: OpenSource, windows: Sequence[PixelWindow]
    ) -> tuple[int, int]:
        assert opened.reader is not None
        assert self.bands is not None
        if self.writer is None:
            try:
                self.writer = ShardWriter(
                    self.output,
                    chip_px=self.options.chip_px,
                    bands=self.bands,
                    lr_scale=self.lr_scale,
                    shard_size=self.options.shard_size,
                    overwrite=self.options.overwrite,
                )
            except OutputError:
                raise
            except OSError as exc:
                raise OutputError(
                    f"cannot create chips folder {self.output}: {exc.strerror or exc}",
                    hint="check the path and its permissions",
                ) from exc
        written = dropped = 0
        for window in windows:
            chip = opened.reader.read(window)
            if float(chip.hr_valid.mean()) < self.options.min_valid:
                dropped += 1
                continue
            self.writer.add(
                split,
                source=index,
                origin=(window.row_off, window.col_off),
                hr=chip.hr,
                ref=chip.ref,
                mask=chip.mask,
                hr_valid=chip.hr_valid,
                ref_valid=chip.ref_valid,
                lr=chip.lr if self.lr_scale is not None else None,
            )
            written += 1
        return written, dropped

    def report(
        self, encoding: dict[str, Any], warnings: list[str], *, manifest: Path | None
    ) -> PrepareReport:
        """The report of the run so far."""
        return PrepareReport(
            output=self.output,
            status="dry-run" if self.options.dry_run else "written",
            sources=tuple(self.summaries),
            chips=dict(self.chips),
            skipped_chips=self.skipped_chips,
            skipped_images=tuple(self.skipped_images),
            lr_scale=self.lr_scale,
            mask_encoding=encoding,
            manifest=manifest,
            warnings=(
                *warnings,
                *self.warnings,
                *(f"{n}: skipped, {r}" for n, r in self.skipped_images),
            ),
        )
