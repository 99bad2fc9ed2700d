"""Tests of change-mask encodings: kinds, nodata, class tables, inference and round trips."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdiff_cli.data.masks import (
    BINARY,
    GREY,
    MaskClass,
    MaskEncoding,
    changed,
    encode,
    infer_encoding,
    load_class_table,
    resolve_encoding,
)
from refdiff_cli.errors import ConfigError, InputError

OSCD = MaskEncoding(
    kind="classes",
    classes=(
        MaskClass(value=1, name="unchanged", changed=False),
        MaskClass(value=2, name="changed", changed=True),
    ),
)
#: A SECOND-like semantic table: unchanged plus six land-cover classes with explicit levels.
SEMANTIC = MaskEncoding(
    kind="classes",
    classes=(
        MaskClass(value=0, name="unchanged", changed=False),
        *(
            MaskClass(value=v, name=n, changed=True, level=v / 255)
            for v, n in enumerate(
                ["ground", "tree", "low vegetation", "water", "building", "playground"], start=1
            )
        ),
    ),
    nodata=255,
)
PATTERN = np.array([[0, 1, 1], [0, 0, 1]], dtype=np.float32)  # 1 = changed
ALL_VALID = np.ones(PATTERN.shape, dtype=bool)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "raw",
    [
        PATTERN,
        PATTERN * 255,
        PATTERN.astype(bool),
        PATTERN.astype(np.uint8) * 255,
        np.where(PATTERN > 0, 0.8, 0.2).astype(np.float32),  # probability map
    ],
    ids=["0-1", "0-255", "bool", "uint8-255", "probability"],
)
def test_binary_forms_give_the_same_mask(raw: np.ndarray) -> None:
    mask, valid = encode(raw, ALL_VALID, BINARY)
    assert mask.shape == (1, 2, 3)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask[0], PATTERN)
    assert valid.all()
    np.testing.assert_array_equal(changed(raw, BINARY), PATTERN.astype(bool))


def test_binary_threshold_is_one_half_and_negatives_are_refused() -> None:
    mask, _ = encode(np.array([[0.49, 0.5, 3.0]]), np.ones((1, 3), bool), BINARY)
    np.testing.assert_array_equal(mask[0], [[0.0, 1.0, 1.0]])
    with pytest.raises(InputError, match=r"cd\.tif: negative values \(-1\)"):
        encode(np.array([[0.0, -1.0]]), np.ones((1, 2), bool), BINARY, source="cd.tif")


def test_nan_inf_and_nodata_are_invalid() -> None:
    raw = np.array([[np.nan, 1.0, 255.0], [np.inf, 0.0, 1.0]], dtype=np.float32)
    reader_valid = np.array([[True, True, True], [True, True, False]])
    encoding = MaskEncoding(kind="binary", nodata=255)
    mask, valid = encode(raw, reader_valid, encoding)
    np.testing.assert_array_equal(valid, [[False, True, False], [False, True, False]])
    np.testing.assert_array_equal(mask[0], [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(
        changed(raw, encoding), [[False, True, False], [False, False, True]]
    )


def test_float32_nodata_matches_exactly() -> None:
    nodata = float(np.float32(0.1))  # as rasterio reports a float32 nodata
    raw = np.array([[np.float32(0.1), 0.0]], dtype=np.float32)
    _, valid = encode(raw, np.ones((1, 2), bool), MaskEncoding(kind="binary", nodata=0.1))
    np.testing.assert_array_equal(valid, [[False, True]])
    assert nodata != 0.1  # the case the raw-dtype comparison exists for


def test_grey_feeds_code_over_255() -> None:
    raw = np.array([[0, 29, 128, 255]], dtype=np.uint8)
    mask, valid = encode(raw, np.ones((1, 4), bool), GREY)
    np.testing.assert_allclose(mask[0], raw / 255, rtol=1e-6)
    assert valid.all()
    np.testing.assert_array_equal(changed(raw, GREY), [[False, True, True, True]])
    white_unchanged = MaskEncoding(kind="grey", unchanged_value=255)
    np.testing.assert_array_equal(changed(raw, white_unchanged), [[True, True, True, False]])
    with pytest.raises(InputError, match="outside the grey code range"):
        encode(np.array([[300.0]]), np.ones((1, 1), bool), GREY)


def test_class_table_oscd_and_semantic() -> None:
    raw = np.array([[1, 2, 2], [1, 1, 2]], dtype=np.uint8)
    mask, _ = encode(raw, np.ones((2, 3), bool), OSCD)
    np.testing.assert_array_equal(mask[0], raw - 1)
    np.testing.assert_array_equal(changed(raw, OSCD), raw == 2)
    semantic = np.array([[0, 5, 255], [6, 1, 0]], dtype=np.uint8)
    mask, valid = encode(semantic, np.ones((2, 3), bool), SEMANTIC)
    np.testing.assert_allclose(mask[0], [[0, 5 / 255, 0], [6 / 255, 1 / 255, 0]], rtol=1e-6)
    np.testing.assert_array_equal(valid, [[True, True, False], [True, True, True]])
    np.testing.assert_array_equal(
        changed(semantic, SEMANTIC), [[False, True, False], [True, True, False]]
    )


def test_values_missing_from_the_class_table_are_named() -> None:
    raw = np.array([[1, 2, 7], [9, 1, 7]], dtype=np.uint8)
    with pytest.raises(InputError, match=r"oscd-cm\.tif: values 7, 9 are not in the class table"):
        encode(raw, np.ones((2, 3), bool), OSCD, source="oscd-cm.tif")
    with pytest.raises(InputError, match="not in the class table"):
        changed(raw, OSCD)
    reader_valid = raw < 7  # unknown values outside the valid area are fine
    mask, valid = encode(raw, reader_valid, OSCD)
    assert mask[0][~reader_valid].sum() == 0
    assert (valid == reader_valid).all()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1], BINARY),
        ([0, 255], BINARY),
        ([0], BINARY),
        ([255], BINARY),
        ([0.0, 1.0, np.nan], BINARY),
        ([0.0, 0.25, 0.7, 1.0], BINARY),
        ([0, 29, 38, 75, 128, 150, 255], GREY),
        ([0, 64, 128], GREY),
    ],
)
def test_infer_encoding_decisions(values: list[float], expected: MaskEncoding) -> None:
    assert infer_encoding(values) == expected


@pytest.mark.parametrize(
    "values",
    [[1, 2], [0, 1, 4], [0, 1, 2, 3, 4, 5, 6], [0, 1000, 2000], [0, 2.5], [0, 16], [29, 128, 255]],
    ids=["oscd", "class-indices", "seven-indices", "beyond-255", "fraction>1", "two", "no-zero"],
)
def test_infer_encoding_asks_for_a_class_table(values: list[float]) -> None:
    with pytest.raises(InputError, match=r"cm\.tif: cannot tell what the mask values") as info:
        infer_encoding(values, source="cm.tif")
    assert info.value.hint is not None
    assert "class table" in info.value.hint


def test_load_csv_class_table_with_header_comments_and_nodata(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "oscd.csv",
        "# OSCD change maps\nvalue,name,changed\n1,unchanged,false\n\n2, changed ,TRUE\n"
        "0,outside,nodata\n",
    )
    encoding = load_class_table(path)
    assert encoding == MaskEncoding(kind="classes", classes=OSCD.classes, nodata=0)


def test_load_json_class_tables(tmp_path: Path) -> None:
    rows = [
        {"value": 1, "name": "unchanged", "changed": False},
        {"value": 2, "name": "changed", "changed": True, "level": 1.0},
    ]
    bare = load_class_table(write(tmp_path, "a.json", json.dumps(rows)))
    assert [c.value for c in bare.classes] == [1, 2]
    assert bare.classes[1].level == 1.0
    wrapped = load_class_table(
        write(tmp_path, "b.json", json.dumps({"classes": rows, "nodata": 0}))
    )
    assert wrapped.nodata == 0
    assert wrapped.classes == bare.classes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,unchanged,false\n2,changed\n", "line 2: expected 3 or 4 fields, found 2"),
        ("value,name,changed\none,unchanged,false\n", "line 2: value 'one' is not a number"),
        ("1.5,half,true\n", "line 1: value '1.5' is not an integer"),
        ("1,unchanged,maybe\n", "line 1: changed 'maybe' is not true/false"),
        ("1,unchanged,false,2.0\n", r"line 1: level '2.0' is not in \[0, 1\]"),
        ("1,a,false\n# note\n1,b,true\n", "line 3: value 1 already given at line 1"),
        ("1, ,false\n", "line 1: empty class name"),
        ("0,x,nodata\n255,y,nodata\n1,a,true\n", "line 2: a second nodata value"),
        ("value,name,changed\n# nothing\n", "lists no classes"),
    ],
)
def test_csv_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "table.csv", text)
    with pytest.raises(InputError, match=message) as info:
        load_class_table(path)
    assert "table.csv" in info.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"value": 1, "name": "a"', "line 1: invalid JSON"),
        ('{"labels": []}', "expected a list of classes"),
        ('[{"value": 1, "name": "a", "changed": false}, {"value": 2}]', "entry 2: needs keys"),
    ],
)
def test_json_errors_name_the_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_class_table(write(tmp_path, "table.json", text))


def test_missing_table_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read class table"):
        load_class_table(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    "encoding",
    [BINARY, GREY, MaskEncoding(kind="grey", unchanged_value=255, nodata=-1), OSCD, SEMANTIC],
)
def test_to_dict_from_dict_round_trip(encoding: MaskEncoding) -> None:
    data = json.loads(json.dumps(encoding.to_dict()))  # through JSON, as in the model card
    assert MaskEncoding.from_dict(data) == encoding


@given(
    st.lists(
        st.tuples(st.integers(0, 65535), st.text(min_size=1, max_size=8), st.booleans()),
        min_size=1,
        max_size=8,
        unique_by=lambda row: row[0],
    ),
    st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_class_table_round_trip_property(
    rows: list[tuple[int, str, bool]], level: float | None
) -> None:
    classes = tuple(MaskClass(value=v, name=n, changed=c, level=level) for v, n, c in rows)
    encoding = MaskEncoding(kind="classes", classes=classes)
    assert MaskEncoding.from_dict(json.loads(json.dumps(encoding.to_dict()))) == encoding


def test_invalid_encodings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="class table"):
        MaskEncoding(kind="binary", classes=OSCD.classes)
    with pytest.raises(ConfigError, match="class table"):
        MaskEncoding(kind="classes")
    with pytest.raises(ConfigError, match="duplicate"):
        MaskEncoding(kind="classes", classes=OSCD.classes + OSCD.classes[:1])
    with pytest.raises(ConfigError, match="kind"):
        MaskEncoding.from_dict({"kind": "fuzzy"})
    with pytest.raises(ConfigError, match="unknown mask encoding key"):
        MaskEncoding.from_dict({"kind": "binary", "threshold": 0.5})
    with pytest.raises(ConfigError, match="changed must be true or false"):
        MaskEncoding.from_dict(
            {"kind": "classes", "classes": [{"value": 1, "name": "a", "changed": "false"}]}
        )
    assert MaskEncoding(kind="binary", nodata=float("nan")).nodata is None


def test_resolve_encoding_option(tmp_path: Path) -> None:
    assert resolve_encoding("binary") == BINARY
    assert resolve_encoding("grey") == GREY
    assert resolve_encoding("auto", [0, 255]) == BINARY
    table = write(tmp_path, "oscd.csv", "1,unchanged,false\n2,changed,true\n")
    assert resolve_encoding(str(table)) == OSCD


def read_band(path: Path) -> np.ndarray:
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PNG/BMP labels and OSCD maps carry no georeferencing
        with rasterio.open(path) as src:
            return np.asarray(src.read(1))


@pytest.mark.real_data
def test_real_change_labels(shared_data: Path) -> None:
    levir = read_band(sorted((shared_data / "cd_pairs" / "levir" / "label").glob("*.png"))[0])
    encoding = infer_encoding(np.unique(levir))
    assert encoding == BINARY
    mask, valid = encode(levir, np.ones(levir.shape, bool), encoding)
    np.testing.assert_array_equal(mask[0], levir == 255)
    assert valid.all()
    oscd = read_band(shared_data / "oscd" / "paris" / "cm" / "paris-cm.tif")
    with pytest.raises(InputError, match="values 1, 2"):
        infer_encoding(np.unique(oscd), source="paris-cm.tif")
    np.testing.assert_array_equal(changed(oscd, OSCD), oscd == 2)
    assert 0 < changed(oscd, OSCD).mean() < 0.5
    multiclass = read_band(
        shared_data / "cd_pairs" / "paddlers" / "label" / "optical_multiclass.png"
    )
    with pytest.raises(InputError, match="values 0, 1, 4"):
        infer_encoding(np.unique(multiclass))


def test_anti_aliased_binary_masks_are_recognised_from_pixel_counts() -> None:
    assert infer_encoding({0.0: 9_900, 255.0: 95, 128.0: 3, 21.0: 2}) == BINARY
    # The same values without counts, or with many mid values, are not binary.
    assert infer_encoding([0.0, 128.0, 255.0]) != BINARY
    assert infer_encoding({0.0: 500, 255.0: 400, 128.0: 100}) != BINARY


def test_channel_kind_tells_binary_from_graded_channels() -> None:
    from refdiff_cli.data.masks import channel_kind

    plain = MaskEncoding(kind="classes", classes=(MaskClass(value=1, name="u", changed=False),))
    levels = MaskEncoding(
        kind="classes", classes=(MaskClass(value=1, name="u", changed=False, level=0.3),)
    )
    assert channel_kind(BINARY) == channel_kind(plain) == "binary"
    assert channel_kind(GREY) == channel_kind(levels) == "graded"
    assert channel_kind({"kind": "binary"}) == "binary"  # a model card's dict
