"""CSV lists of GeoTIFF sets (one set of file paths per line), parsed into paths only."""

from __future__ import annotations

import collections
import csv
import io
from collections.abc import Sequence
from pathlib import Path

from refdiff_cli.errors import InputError


def read_set_csv(path: Path, columns: Sequence[str]) -> list[dict[str, Path]]:
    """Parse a CSV list of GeoTIFF sets into paths (reading them is ``geo/read``'s job).

    The first non-blank line is the header (e.g. ``lr,ref,mask,hr`` for evaluate or
    ``hr,ref,mask`` for prepare); column names are case-insensitive and may come in any
    order; extra columns are ignored. Blank lines and lines starting with ``#`` are
    skipped. Relative paths are relative to the CSV's folder.

    Args:
        path: the CSV file (UTF-8, a byte-order mark is allowed).
        columns: the required column names.

    Returns:
        One ``{column: absolute-or-CSV-relative Path}`` per data row, in file order.

    Raises:
        InputError: unreadable CSV, a missing or repeated column, a row with more cells than
            the header, an empty cell, a file that does not exist, or no data rows; messages
            name the CSV and the line.
    """
    path = Path(path)
    hint = f"write a header line {','.join(columns)} and one set of file paths per line"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read set list {path}: {exc}", hint=hint) from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[dict[str, Path]] = []
    for cells in reader:
        line = reader.line_num
        if not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = _parse_header(cells, columns, path, line, hint)
            continue
        where = f"{path}, line {line}"
        if len(cells) > len(header):
            raise InputError(
                f"{where}: {len(cells)} cells but the header has {len(header)}",
                hint="quote paths that contain commas",
            )
        row: dict[str, Path] = {}
        for column in columns:
            index = header.index(column.lower())
            cell = cells[index].strip() if index < len(cells) else ""
            if not cell:
                raise InputError(f"{where}: empty {column!r} cell", hint=hint)
            file = Path(cell)
            file = file if file.is_absolute() else path.parent / file
            if not file.is_file():
                raise InputError(
                    f"{where}: {column} file {file} does not exist",
                    hint="paths are relative to the CSV's folder",
                )
            row[column] = file
        rows.append(row)
    if not rows:
        raise InputError(f"set list {path} lists no sets", hint=hint)
    return rows


def _parse_header(
    cells: list[str], columns: Sequence[str], path: Path, line: int, hint: str
) -> list[str]:
    header = [c.strip().lower() for c in cells]
    repeated = sorted(name for name, n in collections.Counter(header).items() if n > 1 and name)
    if repeated:
        raise InputError(
            f"{path}, line {line}: repeated column(s) {', '.join(repeated)}", hint=hint
        )
    missing = [c for c in columns if c.lower() not in header]
    if missing:
        raise InputError(
            f"{path}, line {line}: missing column(s) {', '.join(missing)} in header "
            f"{','.join(header)}",
            hint=hint,
        )
    return header
