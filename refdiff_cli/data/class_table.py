"""Change-mask class table files (CSV or JSON) read into checked rows.

CSV: one class per line ``value,name,changed[,level]`` with an optional header line and
``#`` comments; ``changed`` is true/false (yes/no, 1/0, changed/unchanged) or ``nodata``.
JSON: ``[{"value": 1, "name": "unchanged", "changed": false, "level": 0.0}, ...]`` or
``{"classes": [...], "nodata": 255}``. ``masks.load_class_table`` turns the rows into an
encoding.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from refdiff_cli.errors import InputError

_TRUE = {"true", "yes", "1", "changed", "y", "t"}
_FALSE = {"false", "no", "0", "unchanged", "n", "f"}
_TABLE_HINT = "write one class per line as value,name,changed[,level], e.g. 2,building,true"


def _parse_bool(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def _parse_row(cells: list[str], where: str) -> tuple[float, str, bool | None, float | None]:
    """Parse value,name,changed[,level]; changed None means the row declares nodata."""
    if len(cells) not in (3, 4):
        raise InputError(f"{where}: expected 3 or 4 fields, found {len(cells)}", hint=_TABLE_HINT)
    try:
        value = float(cells[0])
    except ValueError:
        raise InputError(f"{where}: value {cells[0]!r} is not a number", hint=_TABLE_HINT) from None
    if not value.is_integer():
        raise InputError(f"{where}: value {cells[0]!r} is not an integer", hint=_TABLE_HINT)
    name = cells[1].strip()
    if not name:
        raise InputError(f"{where}: empty class name", hint=_TABLE_HINT)
    flag = _parse_bool(cells[2])
    if flag is None and cells[2].strip().lower() != "nodata":
        raise InputError(
            f"{where}: changed {cells[2]!r} is not true/false (or nodata)", hint=_TABLE_HINT
        )
    level = None
    if len(cells) == 4 and cells[3].strip():
        try:
            level = float(cells[3])
        except ValueError:
            level = math.nan
        if not 0.0 <= level <= 1.0:
            raise InputError(f"{where}: level {cells[3]!r} is not in [0, 1]", hint=_TABLE_HINT)
    return value, name, flag, level


def _rows_from_json(text: str, path: Path) -> list[tuple[str, list[str]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"class table {path}, line {exc.lineno}: invalid JSON ({exc.msg})",
            hint='use [{"value": 1, "name": "unchanged", "changed": false}, ...]',
        ) from exc
    entries = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InputError(
            f"class table {path}: expected a list of classes or {{'classes': [...]}}",
            hint='use [{"value": 1, "name": "unchanged", "changed": false}, ...]',
        )
    rows = []
    for i, entry in enumerate(entries, start=1):
        where = f"class table {path}, entry {i}"
        if not isinstance(entry, dict) or not {"value", "name", "changed"} <= set(entry):
            raise InputError(
                f"{where}: needs keys value, name and changed",
                hint='e.g. {"value": 2, "name": "changed", "changed": true}',
            )
        cells = [str(entry["value"]), str(entry["name"]), str(entry["changed"])]
        if entry.get("level") is not None:
            cells.append(str(entry["level"]))
        rows.append((where, cells))
    if isinstance(data, dict) and data.get("nodata") is not None:
        rows.append((f"class table {path}, nodata", [str(data["nodata"]), "nodata", "nodata"]))
    return rows


def _rows_from_csv(text: str, path: Path) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = []
    for number, cells in enumerate(csv.reader(text.splitlines()), start=1):
        if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
            continue
        if not rows and cells[0].strip().lower() == "value":
            continue  # header
        rows.append((f"class table {path}, line {number}", [c.strip() for c in cells]))
    return rows


def read_class_table(path: Path) -> tuple[list[tuple[int, str, bool, float | None]], float | None]:
    """Read a class table (``.json`` or CSV, anything else) into checked rows.

    Args:
        path: the table file.

    Returns:
        ``(classes, nodata)``: one ``(value, name, changed, level)`` per class in file order,
        and the value of the row whose ``changed`` reads ``nodata`` (None without one).

    Raises:
        InputError: unreadable file or bad content, naming the file and line (or entry).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class table {path}: {exc}", hint=_TABLE_HINT) from exc
    is_json = path.suffix.lower() == ".json"
    rows = _rows_from_json(text, path) if is_json else _rows_from_csv(text, path)
    classes: list[tuple[int, str, bool, float | None]] = []
    seen: dict[float, str] = {}
    nodata: float | None = None
    for where, cells in rows:
        value, name, flag, level = _parse_row(cells, where)
        if value in seen:
            raise InputError(
                f"{where}: value {value:g} already given at {seen[value]}",
                hint="list each value once",
            )
        seen[value] = where.rsplit(", ", 1)[-1]
        if flag is None:
            if nodata is not None:
                raise InputError(f"{where}: a second nodata value", hint="declare one nodata")
            nodata = value
        else:
            classes.append((int(value), name, flag, level))
    if not classes:
        raise InputError(f"class table {path} lists no classes", hint=_TABLE_HINT)
    return classes, nodata
