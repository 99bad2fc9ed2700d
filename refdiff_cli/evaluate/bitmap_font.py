"""A 5x9 bitmap font for the evaluate figure's labels: no font file and no imaging library.

Text is drawn black onto (3, H, W) uint8 canvases, clipped to them; ``draw_label`` picks the
first variant of a label that fits its place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: Font pixels are this many figure pixels at the default size (glyphs 10 x 18 px); labels
#: that do not fit their place are drawn at 1 and then shortened with "..".
LABEL_SCALE = 2
#: Glyph cell of the bitmap font, pixels: 5 wide, 7 above the baseline and 2 below.
GLYPH_W, GLYPH_H = 5, 9
#: The bitmap font, printable ASCII (32-126) in order: per glyph nine 5-bit rows, top row in
#: the high bits, leftmost pixel in each row's high bit. Drawn for refdiff, so a figure needs
#: no font file and no imaging library; other characters are drawn as "?".
_GLYPHS = (
    0x000000000000,
    0x042108401000,
    0x0A5280000000,
    0x0A57D5F52800,
    0x047D1C5F1000,
    0x18C888898C00,
    0x0C9511593400,
    0x042200000000,
    0x022210820800,
    0x082084222000,
    0x00255D520000,
    0x00213E420000,
    0x000000021100,
    0x00003E000000,
    0x000000063000,
    0x000888880000,
    0x0E8CEB98B800,
    0x046108423800,
    0x0E8844447C00,
    0x1F110418B800,
    0x0232A5F10800,
    0x1F878218B800,
    0x06443D18B800,
    0x1F0888842000,
    0x0E8C5D18B800,
    0x0E8C5E113000,
    0x006300C60000,
    0x006300C62000,
    0x022220820800,
    0x0007C1F00000,
    0x082082222000,
    0x0E8844401000,
    0x0E885B5AB800,
    0x0E8C7F18C400,
    0x1E8C7D18F800,
    0x0E8C2108B800,
    0x1C9463197000,
    0x1F843D087C00,
    0x1F843D084000,
    0x0E8C2F18BC00,
    0x118C7F18C400,
    0x0E2108423800,
    0x071084293000,
    0x119531494400,
    0x108421087C00,
    0x11DD6B18C400,
    0x118E6B38C400,
    0x0E8C6318B800,
    0x1E8C7D084000,
    0x0E8C63593400,
    0x1E8C7D494400,
    0x0F841C10F800,
    0x1F2108421000,
    0x118C6318B800,
    0x118C63151000,
    0x118C6B5AA800,
    0x118A88A8C400,
    0x118A88421000,
    0x1F0888887C00,
    0x0E4210843800,
    0x008208208000,
    0x0E1084213800,
    0x045440000000,
    0x0000000003E0,
    0x082080000000,
    0x000382F8BC00,
    0x1087A318F800,
    0x0003A108B800,
    0x010BE318BC00,
    0x0003A3F83800,
    0x064A38842000,
    0x0003E318BC2E,
    0x1085B318C400,
    0x040308423800,
    0x020184210A4C,
    0x1084A98A4800,
    0x0C2108423800,
    0x0006AB5AD400,
    0x0005B318C400,
    0x0003A318B800,
    0x0007A318FA10,
    0x0003E318BC21,
    0x0005B3084000,
    0x0003E0E0F800,
    0x084710849800,
    0x00046319B400,
    0x000463151000,
    0x0004635AA800,
    0x000454454400,
    0x00046318BC2E,
    0x0007C4447C00,
    0x022110420800,
    0x042108421000,
    0x082104422000,
    0x00022A200000,
)


def wrap_text(text: str, width: int, max_lines: int) -> list[str]:
    """``text`` cut into lines of ``width`` characters, at most ``max_lines`` (>= 1) of them;
    a cut-off end is marked with ".."."""
    lines = [text[i : i + width] for i in range(0, len(text), width)] or [""]
    keep = max(1, max_lines)
    if len(lines) > keep:
        lines = lines[:keep]
        lines[-1] = lines[-1][: width - 2] + ".."
    return lines


def text_width(text: str, scale: int) -> int:
    """Width of ``text`` in pixels at font scale ``scale`` (one blank font pixel between
    glyphs, none after the last)."""
    return max(0, len(text) * (GLYPH_W + 1) * scale - scale)


def draw_label(
    canvas: npt.NDArray[np.uint8],
    text: str | Sequence[str],
    top: int,
    left: int,
    width: int,
    *,
    centre: bool,
) -> None:
    """Draw the first of the ``text`` variants that fits ``width`` px, black, at ``top``.

    Each variant is tried at ``LABEL_SCALE``, then all at scale 1; if none fits, the last is
    shortened with "..". ``centre`` centres it in the ``width`` px from ``left``.
    """
    variants = [text] if isinstance(text, str) else list(text)
    for scale in (LABEL_SCALE, 1):
        fitting = [v for v in variants if text_width(v, scale) <= width]
        if fitting:
            chosen = fitting[0]
            break
    else:
        scale, chosen = 1, variants[-1]
        room = max(0, (width + 1) // (GLYPH_W + 1) - 2)
        chosen = chosen[:room] + ".."
    offset = (width - text_width(chosen, scale)) // 2 if centre else 0
    draw_text(canvas, chosen, top, left + max(0, offset), scale)


def draw_text(canvas: npt.NDArray[np.uint8], text: str, top: int, left: int, scale: int) -> None:
    """Draw ``text`` black onto ``canvas`` (3, H, W) with the bitmap font, clipped to it."""
    bits = np.array([1 << (GLYPH_W - 1 - x) for x in range(GLYPH_W)])
    for k, char in enumerate(text):
        code = ord(char)
        glyph = _GLYPHS[code - 32] if 32 <= code < 127 else _GLYPHS[ord("?") - 32]
        rows = [(glyph >> (GLYPH_W * (GLYPH_H - 1 - y))) & 0x1F for y in range(GLYPH_H)]
        mask = (np.array(rows)[:, None] & bits[None]) > 0  # (GLYPH_H, GLYPH_W)
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
        x0 = left + k * (GLYPH_W + 1) * scale
        y1, x1 = min(top + mask.shape[0], canvas.shape[1]), min(x0 + mask.shape[1], canvas.shape[2])
        if y1 <= top or x1 <= x0:
            continue
        region = canvas[:, top:y1, x0:x1]  # (3, h, w), a view
        region[:, mask[: y1 - top, : x1 - x0]] = 0
