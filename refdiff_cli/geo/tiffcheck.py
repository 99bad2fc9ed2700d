"""A TIFF file's directory checked against its size: truncation that GDAL only warns about.

A GeoTIFF cut short by a few bytes can lose only tag data stored at its end (GDAL metadata,
the GeoKeys, nodata) while every pixel block is intact. GDAL opens it with a warning
("IO error during reading of GDALMetadata; tag ignored") and drops the tag: a file whose
nodata or georeferencing silently vanished. Pixel blocks past the end are found by the full
decode; this module finds tags and directories past the end, from the file's bytes (stdlib).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

#: Bytes per value of each TIFF field type (TIFF 6.0 and BigTIFF).
_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TYPE_BYTES.update({13: 4, 16: 8, 17: 8, 18: 8})
#: Names of the tags a GeoTIFF usually stores out of line, for messages.
TAG_NAMES = {
    273: "StripOffsets",
    279: "StripByteCounts",
    320: "ColorMap",
    324: "TileOffsets",
    325: "TileByteCounts",
    338: "ExtraSamples",
    339: "SampleFormat",
    33550: "ModelPixelScale",
    33922: "ModelTiepoint",
    34264: "ModelTransformation",
    34735: "GeoKeyDirectory",
    34736: "GeoDoubleParams",
    34737: "GeoASCIIParams",
    42112: "GDALMetadata",
    42113: "GDALNoData",
}
#: Directories followed at most (the image, its overviews and masks).
MAX_DIRECTORIES = 256


def truncation(path: Path) -> str | None:
    """What of ``path``'s TIFF structure lies past its end, or None when all of it is there.

    Follows the chain of image directories; for each, checks that the directory and the data
    of every tag lie inside the file. Not a TIFF at all: None (GDAL reports that itself).
    """
    with open(path, "rb") as stream:
        size = stream.seek(0, 2)
        stream.seek(0)
        header = stream.read(16)
        if len(header) < 8 or header[:2] not in (b"II", b"MM"):
            return None
        order = "<" if header[:2] == b"II" else ">"
        magic = struct.unpack(order + "H", header[2:4])[0]
        if magic == 42:
            big, offset = False, struct.unpack(order + "I", header[4:8])[0]
        elif magic == 43 and len(header) >= 16:
            big, offset = True, struct.unpack(order + "Q", header[8:16])[0]
        else:
            return None
        seen: set[int] = set()
        index = 0
        while offset and offset not in seen and index < MAX_DIRECTORIES:
            seen.add(offset)
            problem, offset = _check_directory(stream, order, big, offset, size, index)
            if problem is not None:
                return problem
            index += 1
    return None


def _check_directory(
    stream: BinaryIO, order: str, big: bool, offset: int, size: int, index: int
) -> tuple[str | None, int]:
    """(problem or None, offset of the next directory) for the directory at ``offset``."""
    where = "image directory" if index == 0 else f"directory {index + 1} (an overview or mask)"
    count_format, entry_bytes, next_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_bytes, next_bytes = struct.calcsize(count_format), struct.calcsize(next_format)
    stream.seek(offset)
    raw = stream.read(count_bytes)
    if offset + count_bytes > size or len(raw) < count_bytes:
        return f"its {where} starts at byte {offset}, past the end ({size} bytes)", 0
    count = struct.unpack(order + count_format, raw)[0]
    end = offset + count_bytes + count * entry_bytes + next_bytes
    if end > size:
        return f"its {where} ends at byte {end}, past the end ({size} bytes)", 0
    entries = stream.read(count * entry_bytes)
    inline = 8 if big else 4
    for i in range(count):
        entry = entries[i * entry_bytes : (i + 1) * entry_bytes]
        if big:
            tag, kind, values = struct.unpack(order + "HHQ", entry[:12])
            (data_offset,) = struct.unpack(order + "Q", entry[12:20])
        else:
            tag, kind, values, data_offset = struct.unpack(order + "HHII", entry)
        length = _TYPE_BYTES.get(kind, 1) * values
        if length <= inline:
            continue
        if data_offset + length > size:
            name = TAG_NAMES.get(tag, f"tag {tag}")
            return (
                f"the {name} data of its {where} (bytes {data_offset}-"
                f"{data_offset + length - 1}) lies past the end ({size} bytes)",
                0,
            )
    (next_offset,) = struct.unpack(order + next_format, stream.read(next_bytes))
    return None, next_offset
