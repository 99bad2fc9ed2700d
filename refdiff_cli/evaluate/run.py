"""The evaluate tool: SR methods run through upscale's pipeline, scored per change region."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refdiff_cli import __version__
from refdiff_cli.config import UpscaleOptions, to_dict
from refdiff_cli.data.tiling import TilePlan
from refdiff_cli.errors import ConfigError, OutputError
from refdiff_cli.evaluate.figure import Figure
from refdiff_cli.evaluate.inputs import (
    Dataset,
    Sample,
    load_sample,
    open_dataset,
    paper_scale,
    resolve_layout,
)
from refdiff_cli.evaluate.methods import (
    HighPassEngine,
    Output,
    RefEngine,
    SrFolder,
    engine_sr,
    estimated_masks,
    read_sr,
)
from refdiff_cli.evaluate.options import EvalOptions, MaskSource
from refdiff_cli.evaluate.report import (
    check_output_folder,
    csv_rows,
    data_range_of,
    score,
    write_csv,
)
from refdiff_cli.events import EventHandler, Progress, Started, ignore_event
from refdiff_cli.metrics.perceptual import LPIPS, load_lpips
from refdiff_cli.metrics.scores import (
    PSNR_CAP_DB,
    MetricValue,
    mask_counts,
    mask_scores,
    mean_metrics,
)
from refdiff_cli.model.checkpoint import default_model_installed
from refdiff_cli.model.device import resolve_device
from refdiff_cli.upscale.engine_choice import DEFAULT_BICUBIC_SCALE, load_engine
from refdiff_cli.upscale.engines import BicubicEngine, Engine, GuidedEngine
from refdiff_cli.upscale.pipeline import MaskMode

logger = logging.getLogger(__name__)

RegionReport = dict[str, dict[str, MetricValue]]
#: The engines' mask for each ``--mask-source``.
MASK_MODES: dict[MaskSource, MaskMode] = {"label": "file", "estimated": "estimated", "none": "none"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalReport:
    """What an evaluation measured; ``to_dict`` is the ``--json`` document (docs/evaluate-json.md).

    Attributes:
        dataset: the folder or CSV evaluated.
        layout: "cd", "paper" or "csv".
        scale: the SR factor.
        images: item names evaluated, in order.
        cropped: names of the items cut to multiples of the scale.
        methods: per method, ``metrics.mean_metrics`` over the images (regions all, changed,
            unchanged).
        details: per method, how it was run and its seconds.
        counts: images per region (with pixels there) and cropped images.
        settings: the options that determine the numbers.
        figure: the figure's path, rows and columns, or None.
        csv: the CSV's path, or None.
        warnings: messages for the user.
        seconds: wall time of the whole evaluation.
        figure_error: why the figure could not be written at the very end, or None. The
            metrics stand; the command prints them, then this error, and exits 4.
        mask_scores: with ``--mask-source estimated``, precision, recall, F1 and IoU of the
            estimated mask ("estimated") and of change vector analysis ("cva") against the
            labels, pooled over the valid pixels of all images; else None.
    """

    dataset: Path
    layout: str
    scale: int
    images: tuple[str, ...]
    cropped: tuple[str, ...]
    methods: dict[str, dict[str, dict[str, MetricValue]]]
    details: dict[str, dict[str, Any]]
    counts: dict[str, int]
    settings: dict[str, Any]
    figure: dict[str, Any] | None
    csv: str | None
    warnings: tuple[str, ...]
    seconds: float
    figure_error: OutputError | None = None
    mask_scores: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``refdiff evaluate --json``.

        With a ``figure_error`` it also carries the failure keys every failed run prints
        (``status``, ``exit_code``, ``error``, ``message``), beside the metrics.
        """
        document: dict[str, Any] = {
            "refdiff_version": __version__,
            "dataset": str(self.dataset),
            "layout": self.layout,
            "scale": self.scale,
            "n_images": len(self.images),
            "images": list(self.images),
            "cropped": len(self.cropped),
            "cropped_images": list(self.cropped),
            "counts": dict(self.counts),
            "methods": self.methods,
            "method_details": self.details,
            "settings": self.settings,
            "mask_scores": self.mask_scores,
            "csv": self.csv,
            "figure": self.figure,
            "warnings": list(self.warnings),
            "seconds": self.seconds,
        }
        if self.figure_error is not None:
            document.update(
                status="failed",
                exit_code=self.figure_error.exit_code,
                error=type(self.figure_error).__name__,
                message=str(self.figure_error),
            )
        return document


def evaluate(
    dataset_path: Path, options: EvalOptions, *, on_event: EventHandler = ignore_event
) -> EvalReport:
    """Score SR methods on a dataset, overall and in changed and unchanged regions.

    Every engine method runs through ``upscale.sr_strips`` with upscale's tile plan and
    model-space rules and is cast to the LR dtype, so the numbers are those of what
    ``refdiff upscale`` writes. Same options, same numbers (the seed fixes every draw).

    Raises:
        ConfigError: bad options (unknown method, "model" without any model, figure names that
            are not items).
        InputError / ModelError: unusable data or model files, naming them.
        OutputError: the CSV or figure folder is missing or unwritable.
    """
    started = time.monotonic()
    methods = options.resolved_methods()
    check_output_folder(options.csv_path, "--csv")
    check_output_folder(options.figure_path, "--figure")
    layout = resolve_layout(dataset_path, options.layout)
    scale = options.scale
    if scale is None and layout == "paper":
        scale = paper_scale(dataset_path, options.lr_kind)
    engines = _build_engines(methods, options, scale)
    scale = scale or (engines[0].scale if engines else DEFAULT_BICUBIC_SCALE)
    engines += _baselines(methods, scale, options.ref_strength)
    engines.sort(key=lambda e: methods.index(_method_name(e)))
    folders = [SrFolder.scan(name, path) for name, path in options.sr_dirs]
    dataset = open_dataset(
        dataset_path, layout, scale=scale, lr_kind=options.lr_kind, limit=options.limit
    )
    names = [*methods, *(f.name for f in folders)]
    figure = _figure(options, dataset, names, scale)
    lpips = _load_lpips(options)
    uopts = options.upscale_options(scale)

    per_method: dict[str, list[RegionReport]] = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    plans: dict[str, TilePlan] = {}
    rows: list[dict[str, Any]] = []
    cropped: list[str] = []
    warnings: list[str] = []
    counts = {"changed": 0, "unchanged": 0}
    mask_counts_sum: dict[str, Counter[str]] = {"estimated": Counter(), "cva": Counter()}
    task = f"evaluate {dataset_path.name}"
    logger.info(
        "evaluating %d image(s) of %s with %s", len(dataset.items), dataset_path, ", ".join(names)
    )
    on_event(Started(task=task, total=len(dataset.items), unit="image"))
    for index, name in enumerate(dataset.names):
        sample = _load(dataset, index, options)
        if sample.cropped:
            cropped.append(name)
        if sample.geo is not None:
            warnings += [w for w in sample.geo.sources.warnings if w not in warnings]
        changed, valid = sample.changed, sample.valid
        counts["changed"] += int((changed & valid).any())
        counts["unchanged"] += int((~changed & valid).any())
        data_range = data_range_of(sample, options.data_range)
        outputs = _run_methods(
            sample,
            engines,
            folders,
            uopts,
            seconds=seconds,
            plans=plans,
            mask_mode=MASK_MODES[options.mask_source],
        )
        if options.mask_source == "estimated":
            for kind, predicted in estimated_masks(sample, scale, uopts).items():
                mask_counts_sum[kind].update(mask_counts(predicted[valid], changed[valid]))
        for method in names:
            sr, sr_valid = outputs[method]
            report = score(
                sample,
                sr,
                sr_valid,
                data_range=data_range,
                border=options.border,
                rgb=options.rgb,
                lpips=lpips,
            )
            per_method[method].append(report)
            rows += csv_rows(name, method, report, data_range=data_range, cropped=sample.cropped)
        if figure is not None:
            figure.offer(sample, outputs)
        on_event(Progress(task=task, done=index + 1, total=len(dataset.items), unit="image"))

    if cropped:
        message = (
            f"{len(cropped)} image(s) cropped (top-left anchored) to multiples of the scale "
            f"{scale}: {', '.join(cropped[:5])}" + (" ..." if len(cropped) > 5 else "")
        )
        logger.warning("%s", message)
        warnings.append(message)
    if options.csv_path is not None:
        write_csv(options.csv_path, rows)
    figure_error = None
    if figure is not None and options.figure_path is not None:
        try:
            figure.write(options.figure_path)
        except OutputError as exc:  # the metrics must not be lost with the figure
            figure_error = exc
    return EvalReport(
        dataset=dataset_path,
        layout=dataset.layout,
        scale=scale,
        images=dataset.names,
        cropped=tuple(cropped),
        methods={name: mean_metrics(per_method[name]) for name in names},
        details=_details(engines, folders, plans, seconds),
        counts={"images": len(dataset.items), **counts, "cropped": len(cropped)},
        settings=_settings(options, engines, methods),
        figure=None
        if figure is None
        else {
            "path": str(options.figure_path),
            "images": [row.name for row in figure.rows],
            "columns": list(figure.columns),
        },
        csv=None if options.csv_path is None else str(options.csv_path),
        warnings=tuple(warnings),
        seconds=time.monotonic() - started,
        figure_error=figure_error,
        mask_scores=None
        if options.mask_source != "estimated"
        else {kind: mask_scores(dict(c)) for kind, c in mask_counts_sum.items()},
    )


def _run_methods(
    sample: Sample,
    engines: list[Engine],
    folders: list[SrFolder],
    options: UpscaleOptions,
    *,
    seconds: dict[str, float],
    plans: dict[str, TilePlan],
    mask_mode: MaskMode = "file",
) -> dict[str, Output]:
    """Every method's SR of one sample; adds each method's seconds and keeps its tile plan."""
    outputs: dict[str, Output] = {}
    for engine in engines:
        name, clock = _method_name(engine), time.monotonic()
        outputs[name], plans[name] = engine_sr(sample, engine, options, mask_mode=mask_mode)
        seconds[name] += time.monotonic() - clock
    for folder in folders:
        clock = time.monotonic()
        outputs[folder.name] = read_sr(folder, sample)
        seconds[folder.name] += time.monotonic() - clock
    return outputs


def _method_name(engine: Engine) -> str:
    return "model" if engine.name == "diffusion" else engine.name


def _build_engines(
    methods: tuple[str, ...], options: EvalOptions, scale: int | None
) -> list[Engine]:
    """The model engine, when asked for (its scale may decide the run's scale)."""
    if "model" not in methods:
        return []
    if options.model is None and not default_model_installed():
        raise ConfigError(
            "--methods model: no model is installed in this refdiff package and --model was "
            "not given",
            hint="pass --model PATH (a .safetensors file from `refdiff train`), or leave model "
            "out of --methods",
        )
    return [load_engine(options.upscale_options(scale))]


def _baselines(methods: tuple[str, ...], scale: int, ref_strength: float) -> list[Engine]:
    engines: list[Engine] = []
    for method in methods:
        if method == "bicubic":
            engines.append(BicubicEngine(scale))
        elif method == "ref":
            engines.append(RefEngine(scale))
        elif method == "hpf":
            engines.append(HighPassEngine(scale))
        elif method == "guided":
            engines.append(GuidedEngine(scale, ref_strength=ref_strength))
    return engines


def _figure(options: EvalOptions, dataset: Dataset, names: list[str], scale: int) -> Figure | None:
    if options.figure_path is None:
        return None
    wanted = options.figure_images
    if not isinstance(wanted, int):
        missing = [n for n in wanted if n not in dataset.names]
        if missing:
            raise ConfigError(
                f"--figure-images: no image named {', '.join(missing)} in {dataset.root}"
                + (" (within --limit)" if options.limit else ""),
                hint="name images by file stem, or pass a number",
            )
    order = [n for n in names if n == "bicubic"] + [n for n in names if n != "bicubic"]
    return Figure(wanted, order, scale, data_range=options.data_range, border=options.border)


def _load_lpips(options: EvalOptions) -> LPIPS | None:
    if options.lpips_weights is None:
        logger.info("LPIPS is skipped (pass --lpips-weights FILE.safetensors to compute it)")
        return None
    return load_lpips(options.lpips_weights, device=resolve_device(options.device))


def _load(dataset: Dataset, index: int, options: EvalOptions) -> Sample:
    return load_sample(
        dataset,
        index,
        mask_encoding=options.mask_encoding,
        bands=options.bands,
        ref_bands=options.ref_bands,
        mask_grid=options.mask_grid,
    )


def _details(
    engines: list[Engine],
    folders: list[SrFolder],
    plans: Mapping[str, TilePlan],
    seconds: Mapping[str, float],
) -> dict[str, dict[str, Any]]:
    details: dict[str, dict[str, Any]] = {}
    for engine in engines:
        name = _method_name(engine)
        plan = plans.get(name)
        details[name] = {
            "kind": "engine",
            "engine": engine.describe(),
            "tile_px": None if plan is None else plan.tile_px,
            "overlap_px": None if plan is None else plan.overlap_px,
            "margin_px": None if plan is None else plan.margin_px,
            "sr_dir": None,
            "seconds": seconds[name],
        }
    for folder in folders:
        details[folder.name] = {
            "kind": "sr-dir",
            "engine": None,
            "tile_px": None,
            "overlap_px": None,
            "margin_px": None,
            "sr_dir": str(folder.path),
            "seconds": seconds[folder.name],
        }
    return details


def _settings(
    options: EvalOptions, engines: list[Engine], methods: tuple[str, ...]
) -> dict[str, Any]:
    model = next((e for e in engines if e.name == "diffusion"), None)
    sampler = getattr(model, "sampler", None)
    return {
        "methods": list(methods),
        "seed": options.seed,
        "steps": None if sampler is None else sampler.steps,
        "sampler": None if sampler is None else to_dict(sampler),
        "model": None if model is None else model.describe().get("model_path"),
        "model_sha256": None if model is None else model.sha256,
        "precision": None if model is None else options.precision,
        "batch_size": options.batch_size,
        "tiling": to_dict(options.tiling),
        "mask_encoding": options.mask_encoding,
        "mask_source": options.mask_source,
        "ref_strength": options.ref_strength,
        "border": options.border,
        "data_range": options.data_range if options.data_range is not None else "auto",
        "rgb": options.rgb,
        "lpips_weights": None if options.lpips_weights is None else str(options.lpips_weights),
        "limit": options.limit,
        "psnr_cap_db": PSNR_CAP_DB,
    }
