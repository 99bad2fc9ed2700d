"""Change-mask encodings: how raw mask values become the model's mask channel in [0, 1].

Three kinds, recorded in the model card with ``MaskEncoding.to_dict``:

- ``binary``: changed where the value is >= 0.5, so 0/1, 0/255, bool and probability maps
  (thresholded at 0.5) all give the same mask; channel 1.0 = changed, 0.0 = unchanged.
  Negative values are an error.
- ``grey``: the paper's loader: the single-channel grey class code (0..255) divided by 255 is
  fed to the network as is; ``unchanged_value`` (default 0) is the code of "no change", used
  only to split evaluation into changed and unchanged pixels. The released code does not say
  which codes SECOND and CNAM-CD use (their ``CLASS_Table.txt`` ships with the data): check it.
- ``classes``: a class table ``value -> (name, changed[, level])``. The channel is ``level``
  when given (e.g. ``code / 255`` to reproduce the paper's grey input), otherwise 1.0 for a
  changed class and 0.0 for an unchanged one, which matches models trained on binary masks.
  Values missing from the table are an error. Example, OSCD change maps (1 = unchanged,
  2 = changed) as a CSV class table::

      value,name,changed
      1,unchanged,false
      2,changed,true

In every kind, NaN/inf and ``nodata`` pixels are invalid: channel 0.0 and ``valid`` False.
A CSV row whose ``changed`` column reads ``nodata`` sets ``nodata`` to that row's value.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from refdiff_cli.data.class_table import read_class_table
from refdiff_cli.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

MaskKind = Literal["binary", "classes", "grey"]
MASK_KINDS: tuple[MaskKind, ...] = ("binary", "classes", "grey")

#: At most this fraction of a 0/255 mask's pixels may hold other values for it to be read as
#: binary with anti-aliased edges.
ANTIALIAS_FRACTION = 0.01


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MaskClass:
    """One row of a class table.

    Attributes:
        value: integer value of the class in the mask raster.
        name: class name (free text, for reports).
        changed: whether the class means "land cover changed" (evaluation split).
        level: mask-channel value in [0, 1] fed to the network, or None for 1.0/0.0 by
            ``changed``.
    """

    value: int
    name: str
    changed: bool
    level: float | None = None

    @property
    def channel(self) -> float:
        """The value of this class in the network's mask channel, in [0, 1]."""
        if self.level is not None:
            return self.level
        return 1.0 if self.changed else 0.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MaskEncoding:
    """How a raw change mask maps to the model's mask channel (see the module docstring).

    Attributes:
        kind: "binary", "classes" or "grey".
        classes: the class table (kind "classes" only), distinct values.
        unchanged_value: grey code of "no change" (kind "grey" only), 0..255.
        nodata: raw value marking invalid pixels, or None (NaN/inf are always invalid).
    """

    kind: MaskKind
    classes: tuple[MaskClass, ...] = ()
    unchanged_value: float = 0.0
    nodata: float | None = None

    def __post_init__(self) -> None:
        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(f"invalid mask encoding: {message}")

        require(self.kind in MASK_KINDS, f"kind {self.kind!r}; use binary, classes or grey")
        require(
            (self.kind == "classes") == bool(self.classes),
            "a class table is needed by kind 'classes' and only by it",
        )
        values = [c.value for c in self.classes]
        require(len(values) == len(set(values)), f"duplicate class values in {values}")
        for c in self.classes:
            require(c.level is None or 0.0 <= c.level <= 1.0, f"class {c.value} level {c.level}")
        require(0.0 <= self.unchanged_value <= 255.0, f"unchanged_value {self.unchanged_value}")
        if self.nodata is not None and math.isnan(self.nodata):
            object.__setattr__(self, "nodata", None)  # NaN is invalid anyway; keep JSON-safe
        require(self.nodata is None or math.isfinite(self.nodata), f"nodata {self.nodata}")
        require(
            self.nodata is None or self.nodata not in values,
            f"nodata {self.nodata} is also a class value",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for the model card; ``from_dict`` inverts it."""
        data: dict[str, Any] = {"kind": self.kind, "nodata": self.nodata}
        if self.kind == "classes":
            data["classes"] = [dataclasses.asdict(c) for c in self.classes]
        if self.kind == "grey":
            data["unchanged_value"] = self.unchanged_value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskEncoding:
        """Rebuild an encoding from ``to_dict`` output; bad content raises ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"mask encoding must be a table, got {type(data).__name__}")
        unknown = sorted(set(data) - {"kind", "classes", "unchanged_value", "nodata"})
        if unknown:
            raise ConfigError(f"unknown mask encoding key(s): {', '.join(unknown)}")
        try:
            classes = tuple(
                MaskClass(
                    value=int(row["value"]),
                    name=str(row["name"]),
                    changed=_strict_bool(row["changed"]),
                    level=None if row.get("level") is None else float(row["level"]),
                )
                for row in data.get("classes", ())
            )
            nodata = data.get("nodata")
            return cls(
                kind=data["kind"],
                classes=classes,
                unchanged_value=float(data.get("unchanged_value", 0.0)),
                nodata=None if nodata is None else float(nodata),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid mask encoding {data!r}: {exc!r}") from exc


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"changed must be true or false, got {value!r}")
    return value


BINARY = MaskEncoding(kind="binary")
GREY = MaskEncoding(kind="grey")


def _valid(raw: npt.NDArray[Any], encoding: MaskEncoding) -> npt.NDArray[np.bool_]:
    """Finite and not nodata; nodata is compared in the raw dtype (float32 nodata exact)."""
    valid = np.isfinite(raw)
    if encoding.nodata is not None:
        nodata = np.asarray(encoding.nodata)
        valid &= raw != (nodata.astype(raw.dtype) if raw.dtype.kind == "f" else nodata)
    return np.asarray(valid, dtype=bool)


def _values_text(values: npt.NDArray[Any], limit: int = 10) -> str:
    unique = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in unique[:limit].tolist())
    return shown + (f" ... ({unique.size} values)" if unique.size > limit else "")


def _class_index(
    raw: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_], encoding: MaskEncoding, source: str
) -> npt.NDArray[np.intp]:
    """Index into ``encoding.classes`` of every valid pixel (-1 where invalid)."""
    index = np.full(raw.shape, -1, dtype=np.intp)
    for i, mask_class in enumerate(encoding.classes):
        index[valid & (raw == mask_class.value)] = i
    unknown = valid & (index < 0)
    if unknown.any():
        raise InputError(
            f"{source}: values {_values_text(raw[unknown])} are not in the class table",
            hint="add them to the class table (value,name,changed) or declare them nodata",
        )
    return index


def _check_range(
    raw: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_], encoding: MaskEncoding, source: str
) -> None:
    values = raw[valid]
    if encoding.kind == "binary" and values.size and values.min() < 0:
        raise InputError(
            f"{source}: negative values ({_values_text(values[values < 0])}) in a binary mask",
            hint="declare the negative value as the mask's nodata or pass a class table",
        )
    if encoding.kind == "grey" and values.size and (values.min() < 0 or values.max() > 255):
        outside = values[(values < 0) | (values > 255)]
        raise InputError(
            f"{source}: values {_values_text(outside)} are outside the grey code range 0..255",
            hint="use --mask-encoding binary or a class table for this mask",
        )


def encode(
    raw: npt.NDArray[Any],
    valid: npt.NDArray[np.bool_],
    encoding: MaskEncoding,
    *,
    source: str = "mask",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Turn a raw mask window into the network's mask channel.

    Args:
        raw: (H, W) mask values as read (any numeric or bool dtype; float32 typically).
        valid: (H, W) validity from the reader (False where the raster has nodata).
        encoding: how to read the values.
        source: name of the mask file, for error messages.

    Returns:
        ``(mask, valid)``: mask (1, H, W) float32 in [0, 1], 0.0 where invalid; valid (H, W)
        bool, the input validity minus NaN/inf and ``encoding.nodata`` pixels.

    Raises:
        InputError: values the encoding cannot read (negative binary values, grey codes
            outside 0..255, values missing from a class table), naming them and ``source``.
    """
    values = np.asarray(raw, dtype=np.float64)
    valid_out = np.asarray(valid, dtype=bool) & _valid(np.asarray(raw), encoding)
    _check_range(values, valid_out, encoding, source)
    if encoding.kind == "binary":
        channel = (values >= 0.5).astype(np.float32)
    elif encoding.kind == "grey":
        channel = (values / 255.0).astype(np.float32)
    else:
        levels = np.array([c.channel for c in encoding.classes] + [0.0], dtype=np.float32)
        channel = levels[_class_index(values, valid_out, encoding, source)]  # -1 -> 0.0
    channel[~valid_out] = 0.0
    return channel[None], valid_out  # (1, H, W), (H, W)


def changed(
    raw: npt.NDArray[Any], encoding: MaskEncoding, *, source: str = "mask"
) -> npt.NDArray[np.bool_]:
    """Which pixels are "changed" (evaluation's changed/unchanged split).

    Args:
        raw: (H, W) mask values as read.
        encoding: how to read the values.
        source: name of the mask file, for error messages.

    Returns:
        (H, W) bool, False on NaN/inf and ``encoding.nodata`` pixels.

    Raises:
        InputError: as ``encode``.
    """
    values = np.asarray(raw, dtype=np.float64)
    valid = _valid(np.asarray(raw), encoding)
    _check_range(values, valid, encoding, source)
    if encoding.kind == "binary":
        result = values >= 0.5
    elif encoding.kind == "grey":
        result = values != encoding.unchanged_value
    else:
        flags = np.array([c.changed for c in encoding.classes] + [False], dtype=bool)
        result = flags[_class_index(values, valid, encoding, source)]
    return np.asarray(result & valid, dtype=bool)


MaskChannel = Literal["binary", "graded"]


def channel_kind(encoding: MaskEncoding | dict[str, Any]) -> MaskChannel:
    """What the mask channel holds under ``encoding``: 0/1 ("binary") or other levels.

    Binary masks and class tables without levels give 0.0/1.0; grey codes (code / 255) and
    class tables with levels give "graded" values. A model trained on one cannot read the
    other. ``encoding`` may be a model card's or a manifest's ``mask_encoding`` dict.
    """
    if isinstance(encoding, dict):
        encoding = MaskEncoding.from_dict(encoding)
    if encoding.kind == "grey" or any(c.level is not None for c in encoding.classes):
        return "graded"
    return "binary"


def infer_encoding(
    unique_values: Iterable[float] | Mapping[float, int], *, source: str = "mask"
) -> MaskEncoding:
    """Guess the encoding from a mask's distinct values (the CLI's ``--mask-encoding auto``).

    Rules: values within {0, 1} or within {0, 255} (bool included) -> binary; a 0/255 mask
    whose other values cover at most ``ANTIALIAS_FRACTION`` of its pixels (anti-aliased edges
    of a drawn mask; needs ``unique_values`` as a value -> pixel count mapping) -> binary,
    every non-zero value changed; non-integer
    values all within [0, 1] -> binary (a fraction/probability map, changed >= 0.5); 3 to 8
    integer codes within 0..255 including 0 and reaching at least 16 -> grey with 0 as
    "unchanged" (what the paper's grey class codes look like; a warning says so); anything
    else (e.g. OSCD's {1, 2}, class indices {0, 1, 4}) -> InputError asking for a class table.

    Args:
        unique_values: distinct values found in the mask (NaN/inf are ignored).
        source: name of the mask file, for messages.

    Returns:
        The inferred encoding (without nodata: the reader handles the raster's own nodata).
    """
    values = np.unique(np.asarray(list(unique_values), dtype=np.float64))
    values = values[np.isfinite(values)]
    as_set = set(values.tolist())
    if as_set <= {0.0, 1.0} or as_set <= {0.0, 255.0}:
        return BINARY
    if isinstance(unique_values, Mapping) and {0.0, 255.0} <= as_set:
        counts = {float(v): int(n) for v, n in unique_values.items()}
        total = sum(counts.values())
        stray = total - counts[0.0] - counts[255.0]
        if total and stray <= ANTIALIAS_FRACTION * total:
            logger.info(
                "%s: a 0/255 mask with %d pixels of other values (anti-aliased edges); "
                "reading every non-zero value as changed",
                source,
                stray,
            )
            return BINARY
    integers = bool(np.all(values == np.round(values)))
    if not integers and values.min() >= 0 and values.max() <= 1:
        logger.info("%s: fractional values in [0, 1]; reading changed as value >= 0.5", source)
        return BINARY
    looks_grey = integers and 3 <= values.size <= 8 and values.min() == 0
    if looks_grey and 16 <= values.max() <= 255:
        logger.warning(
            "%s: values %s look like the paper's grey class codes; feeding code/255 with 0 as "
            "'unchanged' (pass a class table to be explicit)",
            source,
            _values_text(values),
        )
        return GREY
    raise InputError(
        f"{source}: cannot tell what the mask values {_values_text(values)} mean",
        hint="pass --mask-encoding binary (>= 0.5 is changed), grey, or a class table CSV "
        "(value,name,changed per line; OSCD: 1,unchanged,false and 2,changed,true)",
    )


def load_class_table(path: Path) -> MaskEncoding:
    """Read a class table (``.json`` or CSV, anything else) into a "classes" encoding.

    The file formats are described in ``data/class_table.py``.

    Args:
        path: the table file.

    Returns:
        MaskEncoding(kind="classes", ...).

    Raises:
        InputError: unreadable file or bad content, naming the file and line (or entry).
    """
    rows, nodata = read_class_table(path)
    classes = tuple(
        MaskClass(value=value, name=name, changed=flag, level=level)
        for value, name, flag, level in rows
    )
    return MaskEncoding(kind="classes", classes=classes, nodata=nodata)


def resolve_encoding(
    option: str,
    unique_values: Iterable[float] | Mapping[float, int] | None = None,
    *,
    source: str = "mask",
) -> MaskEncoding:
    """The encoding named by ``--mask-encoding``: "auto", "binary", "grey" or a table path.

    Args:
        option: the option value.
        unique_values: the mask's distinct values (or value -> pixel count), needed by
            "auto".
        source: name of the mask file, for messages.

    Returns:
        The encoding.
    """
    if option == "binary":
        return BINARY
    if option == "grey":
        return GREY
    if option == "auto":
        if unique_values is None:
            raise ValueError("--mask-encoding auto needs the mask's distinct values")
        return infer_encoding(unique_values, source=source)
    return load_class_table(Path(option))
