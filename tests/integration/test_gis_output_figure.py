"""Issue 12, item 3: `evaluate --figure` labels its columns (methods), rows (image names) and
each method's per-image PSNR, in a figure that grows by the label strips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from refdiff_cli.evaluate.bitmap_font import GLYPH_H, LABEL_SCALE, draw_text
from refdiff_cli.evaluate.figure import FIGURE_GAP_PX, FigureLayout
from refdiff_cli.geo.images import read_image
from tests.conftest import run_cli
from tests.unit.test_evaluate import make_cd


def dark(strip: np.ndarray) -> int:
    """Pixels of a (3, h, w) strip that are not the white background."""
    return int((strip.min(axis=0) < 128).sum())


def test_figure_has_column_row_and_psnr_labels(tmp_path: Path) -> None:
    root = make_cd(tmp_path / "cd")
    figure_path, csv_path = tmp_path / "f.png", tmp_path / "m.csv"
    result = run_cli(
        [
            "evaluate",
            str(root),
            "--scale",
            "8",
            "--methods",
            "bicubic,hpf",
            "--figure",
            str(figure_path),
            "--csv",
            str(csv_path),
            "--json",
        ]
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)["figure"]
    columns = document["columns"]
    assert columns == ["lr", "bicubic", "hpf", "hr", "reference", "mask"]
    assert document["images"] == ["b", "a", "c"]  # most changed pixels first
    figure = read_image(figure_path)  # (3, H, W)
    n_rows, n_cols, panel = 3, len(columns), 64
    unlabelled = (n_rows * panel + FIGURE_GAP_PX, n_cols * panel + (n_cols - 1) * FIGURE_GAP_PX)
    assert figure.shape[1] > unlabelled[0] and figure.shape[2] > unlabelled[1]

    line = GLYPH_H * LABEL_SCALE  # the layout the figure was drawn with
    header = figure[:, : line + 8]
    label_w = figure.shape[2] - (n_cols * panel + (n_cols - 1) * FIGURE_GAP_PX)
    layout = FigureLayout(
        panel_h=panel,
        panel_w=panel,
        header_h=header.shape[1],
        label_w=label_w,
        caption_h=line + 8,
        gap=FIGURE_GAP_PX,
        rows=n_rows,
        columns=n_cols,
    )
    assert (layout.height, layout.width) == figure.shape[1:]
    for j in range(n_cols):  # every column is named above its panels
        left = layout.panel_left(j)
        assert dark(header[:, :, left : left + panel]) > 20, columns[j]
    for i in range(n_rows):
        top = layout.panel_top(i)
        name_strip = figure[:, top : top + panel, :label_w]
        assert dark(name_strip) > 20, "no image name left of the row"
        caption = figure[:, top + panel : top + panel + layout.caption_h]
        for j in range(n_cols):
            left = layout.panel_left(j)
            shown = dark(caption[:, :, left : left + panel])
            assert (shown > 20) if columns[j] in ("bicubic", "hpf") else shown == 0, columns[j]

    # The HR panel of the first row sits where the layout says (row "b": most changed).
    top, left = layout.panel_top(0), layout.panel_left(columns.index("hr"))
    hr_panel = figure[:, top : top + panel, left : left + panel]
    np.testing.assert_array_equal(hr_panel, read_image(root / "B" / "b.png"))

    # The caption text is the CSV's PSNR: draw it the same way and compare the pixels.
    with csv_path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    value = next(
        float(r["psnr"])
        for r in rows
        if r["image"] == "b" and r["method"] == "bicubic" and r["region"] == "all"
    )
    expected = np.full((3, layout.caption_h, panel), 255, dtype=np.uint8)
    shown = f"{value:.2f}"  # 64 px panels: "PSNR 12.34 dB" and "12.34 dB" do not fit
    draw_text(expected, shown, 4, (panel - (len(shown) * 12 - 2)) // 2, LABEL_SCALE)
    top, left = layout.panel_top(0) + panel, layout.panel_left(columns.index("bicubic"))
    np.testing.assert_array_equal(
        figure[:, top : top + layout.caption_h, left : left + panel], expected
    )
