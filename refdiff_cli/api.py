"""The Python API: ``upscale`` and ``evaluate`` as functions, for notebooks and scripts.

The CLI commands are thin layers over these functions: they parse their options, call them and
print the returned report (``report.to_dict()`` is the ``--json`` document). Options are the
fields of ``config.UpscaleOptions`` and ``evaluate_options.EvalOptions`` as keyword arguments;
paths may be ``str`` or ``pathlib.Path``, band lists any sequence of ints. Errors are
``errors.RefdiffError`` subclasses (``ConfigError`` for a bad option, ``InputError`` for bad
data, ``ModelError``, ``OutputError``), whose message names the option or file and whose
``hint`` says the fix.

    >>> from refdiff_cli import api
    >>> report = api.upscale("lr.tif", "ref.tif", out="sr.tif", engine="guided")
    >>> report.width, report.height, report.mask_source
    (384, 384, 'estimated')

Importing this module is light (no torch, rasterio or model): the tools load on first call.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

from refdiff_cli.config import UpscaleOptions, from_dict
from refdiff_cli.errors import ConfigError
from refdiff_cli.events import EventHandler, ignore_event

if TYPE_CHECKING:
    from refdiff_cli.evaluate.options import EvalOptions
    from refdiff_cli.evaluate.run import EvalReport
    from refdiff_cli.upscale.batch import BatchReport
    from refdiff_cli.upscale.job import UpscaleJob, UpscaleReport

__all__ = [
    "evaluate",
    "evaluate_options",
    "run_upscale",
    "upscale",
    "upscale_batch",
    "upscale_options",
]

#: A file path as the API accepts it.
PathLike = str | os.PathLike[str]
#: The keys of a job given as a mapping to ``upscale_batch``.
JOB_KEYS = ("lr", "ref", "mask", "output", "mask_out", "trust_out")


def upscale(
    lr: PathLike,
    ref: PathLike,
    mask: PathLike | None = None,
    *,
    out: PathLike,
    mask_out: PathLike | None = None,
    trust_out: PathLike | None = None,
    on_event: EventHandler = ignore_event,
    **options: Any,
) -> UpscaleReport:
    """Super-resolve one LR GeoTIFF with a reference into the GeoTIFF ``out``.

    Args:
        lr, ref: the low-resolution raster and the older high-resolution reference.
        mask: the change mask file; None estimates it from where the registered reference
            disagrees with the LR (``reference/change.py``), as ``refdiff upscale`` without
            ``--mask``.
        out: the output GeoTIFF (on the LR's grid, ``scale`` times finer pixels).
        mask_out: also write the mask used (given or estimated) there, on the output grid.
        trust_out: also write the trust layers there (``reference/trust.py``: reference weight and
            uncertainty), on the output grid.
        on_event: called with ``events.Started`` / ``events.Progress`` (tiles done).
        **options: ``UpscaleOptions`` fields, e.g. ``engine="guided"``, ``seed=1``,
            ``bands=(3, 2, 1)``, ``tiling={"tile_px": 256}``, ``overwrite=True``.

    Returns:
        The ``UpscaleReport`` that ``refdiff upscale --json`` prints under ``"report"``
        (``status`` "written", or "dry-run" with ``dry_run=True``).

    Raises:
        ConfigError: an unknown option or a bad value (``skip_existing`` is for
            ``upscale_batch``); InputError, ModelError, OutputError: as the CLI's exit 3 and 4.
    """
    if options.get("skip_existing"):
        raise ConfigError(
            "upscale(): skip_existing reports skipped items, which only upscale_batch() returns",
            hint="use upscale_batch([...], skip_existing=True), or overwrite=True",
        )
    from refdiff_cli.upscale.batch import check_layer_outputs

    paths = {"lr": lr, "ref": ref, "mask": mask, "output": out}
    job = _job({**paths, "mask_out": mask_out, "trust_out": trust_out})
    check_layer_outputs(job.output, mask_out=job.mask_out, trust_out=job.trust_out)
    item = run_upscale([job], upscale_options(**options), on_event=on_event).items[0]
    if item.error is not None:
        raise item.error
    assert item.report is not None  # written or dry-run: every other status is a failure
    return item.report


def upscale_batch(
    jobs: Sequence[UpscaleJob | Mapping[str, PathLike | None]],
    *,
    on_event: EventHandler = ignore_event,
    **options: Any,
) -> BatchReport:
    """Run several upscales with one loaded engine; a failing item does not stop the others.

    Args:
        jobs: ``upscale.UpscaleJob`` objects, or mappings with the keys ``lr``, ``ref``,
            ``output`` and optionally ``mask``, ``mask_out`` and ``trust_out`` (paths).
        on_event: progress callback, as for ``upscale``.
        **options: ``UpscaleOptions`` fields, as for ``upscale`` (``skip_existing=True``
            skips outputs complete with the same parameters).

    Returns:
        The ``BatchReport`` that ``refdiff upscale --json`` prints for several inputs:
        ``items`` (status "written", "dry-run", "skipped" or "failed" with the error's
        class and message) and ``exit_code`` (0, or 5 when some failed).
    """
    checked = upscale_options(**options)
    return run_upscale([_job(job) for job in jobs], checked, on_event=on_event)


def run_upscale(
    jobs: Sequence[UpscaleJob],
    options: UpscaleOptions,
    *,
    on_event: EventHandler = ignore_event,
) -> BatchReport:
    """Load the engine ``options`` ask for once and run every job (the CLI's core).

    ``options`` must come from ``upscale_options`` (or have had their creation options
    checked with ``geo.creation_options.check_creation_options``, as the CLI does). Under
    torchrun every rank calls this; rank 0's report covers all jobs (``batch.run_batch``).
    """
    from refdiff_cli.upscale.batch import run_batch
    from refdiff_cli.upscale.distributed import World, process_group
    from refdiff_cli.upscale.engine_choice import load_engine

    world = World.from_env()
    with process_group(world):
        return run_batch(jobs, load_engine(options), options, on_event=on_event, world=world)


def evaluate(
    dataset: PathLike,
    *,
    on_event: EventHandler = ignore_event,
    **options: Any,
) -> EvalReport:
    """Score SR methods on a test set, overall and in its changed and unchanged regions.

    Args:
        dataset: a change-detection folder (``A/``, ``B/``, ``label/``), a paper-layout folder
            or a CSV of GeoTIFF sets ``lr,ref,mask,hr``.
        on_event: progress callback (images done).
        **options: ``EvalOptions`` fields, e.g. ``methods=("bicubic", "guided")``,
            ``scale=8``, ``limit=4``, ``csv_path="m.csv"``, ``figure_path="f.png"``.

    Returns:
        The ``EvalReport`` that ``refdiff evaluate --json`` prints: e.g.
        ``report.methods["guided"]["all"]["psnr"]`` is the guided method's mean PSNR in dB.
        A figure that failed after the metrics leaves them standing and sets
        ``report.figure_error`` (the CLI's exit 4).
    """
    from refdiff_cli.evaluate.run import evaluate as run_evaluate

    return run_evaluate(_path(dataset), evaluate_options(**options), on_event=on_event)


def upscale_options(**options: Any) -> UpscaleOptions:
    """Validated ``UpscaleOptions`` from keyword arguments (creation options included).

    Raises:
        ConfigError: an unknown keyword (naming it and listing the valid ones), a value of the
            wrong type, or a value ``UpscaleOptions`` refuses.
    """
    values = _values(UpscaleOptions, "upscale", options)
    if values.get("creation_options"):  # first, as the CLI always did: GDAL says what is wrong
        from refdiff_cli.geo.creation_options import check_creation_options

        check_creation_options(values["creation_options"], cog=values.get("cog", False))
    return UpscaleOptions(**values)


def evaluate_options(**options: Any) -> EvalOptions:
    """Validated ``EvalOptions`` from keyword arguments (see ``upscale_options``)."""
    from refdiff_cli.evaluate.options import EvalOptions

    return EvalOptions(**_values(EvalOptions, "evaluate", options))


def _job(job: UpscaleJob | Mapping[str, PathLike | None]) -> UpscaleJob:
    """An ``UpscaleJob`` from a job or a mapping of paths; ConfigError naming a bad key."""
    from refdiff_cli.upscale.job import UpscaleJob

    if isinstance(job, UpscaleJob):
        return job
    if not isinstance(job, Mapping):
        raise ConfigError(
            f"upscale_batch(): a job must be an UpscaleJob or a mapping, got {type(job).__name__}",
            hint="e.g. {'lr': 'a.tif', 'ref': 'ref.tif', 'output': 'a_sr.tif'}",
        )
    unknown = sorted(set(job) - set(JOB_KEYS))
    missing = [key for key in ("lr", "ref", "output") if job.get(key) is None]
    if unknown or missing:
        what = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
        raise ConfigError(
            f"upscale job {dict(job)!r}: {what}",
            hint=f"keys: {', '.join(JOB_KEYS)} (lr, ref and output are required)",
        )
    paths = {key: _path(job[key], key) if job.get(key) is not None else None for key in JOB_KEYS}
    return UpscaleJob(**paths)  # type: ignore[arg-type]  # lr, ref, output checked above


def _path(value: object, name: str = "dataset") -> Path:
    """``value`` as a Path; ConfigError naming ``name`` when it is not a path."""
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise ConfigError(
        f"{name}={value!r} is not a path", hint=f"pass {name} as a str or pathlib.Path"
    )


def _values(cls: type[Any], function: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``cls``, each known and converted to its field's type.

    Strings and path-likes become Paths, lists become tuples, mappings become nested option
    dataclasses (``tiling={"tile_px": 256}``) or pairs (``sr_dirs={"esrgan": "out/"}``).
    """
    hints = get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    names = list(fields)
    for name in options:
        if name not in fields:
            close = difflib.get_close_matches(name, names, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{function}() got an unknown option {name!r}{guess}",
                hint=f"valid options: {', '.join(names)}",
            )
    return {
        name: _convert(function, fields[name], value, hints[name])
        for name, value in options.items()
    }


class _Mismatch(Exception):
    """A value that does not fit a type hint (caught by ``_convert``)."""


def _convert(function: str, field: dataclasses.Field[Any], value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint``; ConfigError naming the option, its type and default."""
    try:
        return _fit(value, hint)
    except _Mismatch:
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        raise ConfigError(
            f"{function}(): option {field.name}={value!r} is not {_describe(hint)}",
            hint=f"e.g. {field.name}={default!r}, the default",
        ) from None


def _fit(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (see ``_values``); raises _Mismatch when it does not fit."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _fit(value, option)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _Mismatch
    if origin is tuple:
        if isinstance(value, Mapping) and len(args) == 2 and get_origin(args[0]) is tuple:
            value = list(value.items())  # {"name": dir} for pairs
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_fit(item, args[0]) for item in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_fit(item, arg) for item, arg in zip(value, args, strict=True))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return from_dict(hint, dict(value))
        raise _Mismatch
    return _fit_scalar(value, hint)


def _fit_scalar(value: Any, hint: Any) -> Any:
    """``value`` as bool, int, float, str or Path; raises _Mismatch otherwise."""
    is_bool = isinstance(value, bool)
    if hint is bool and is_bool:
        return value
    if hint is int and isinstance(value, numbers.Integral) and not is_bool:
        return int(value)
    if hint is float and isinstance(value, numbers.Real) and not is_bool:
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if hint is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    raise _Mismatch


#: Scalar types in words: (singular with article, plural).
_WORDS: dict[Any, tuple[str, str]] = {
    bool: ("True or False", "bools"),
    int: ("an int", "ints"),
    float: ("a number", "numbers"),
    str: ("a str", "strs"),
    Path: ("a path", "paths"),
}


def _describe(hint: Any, *, plural: bool = False) -> str:
    """A type hint in words: "an int", "None or a sequence of ints", "one of 'heun', 'euler'"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join((["None"] if type(None) in args else []) + parts)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a sequence of {_describe(args[0], plural=True)}"
        pair = "(" + ", ".join(_describe(a, plural=True)[:-1] for a in args) + ")"
        return f"{pair} pairs" if plural else f"a {pair} pair"
    if hint in _WORDS:
        return _WORDS[hint][1 if plural else 0]
    return f"a {getattr(hint, '__name__', hint)} or a dict of its fields"
