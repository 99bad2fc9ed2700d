"""End-to-end `refdiff evaluate`: CLI outputs and exit codes, the GeoTIFF set route, real data."""

from __future__ import annotations

import csv
import json
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.evaluate.options import EvalOptions
from refdiff_cli.evaluate.run import evaluate
from refdiff_cli.geo.images import read_image, write_png
from refdiff_cli.upscale.engines import BicubicEngine
from refdiff_cli.upscale.job import UpscaleJob
from refdiff_cli.upscale.run import upscale
from tests.conftest import SAMPLE_DATA, run_cli

CliRunner = Callable[..., tuple[int, str, str]]


def make_cd(root: Path, names: tuple[str, ...] = ("p1", "p2")) -> Path:
    """A tiny cd folder: 64x64 RGB pairs whose B differs from A in a 20x20 block."""
    rng = np.random.default_rng(11)
    for name in names:
        hr = rng.integers(40, 200, size=(3, 64, 64)).astype(np.uint8)
        label = np.zeros((1, 64, 64), dtype=np.uint8)
        label[0, 10:30, 10:30] = 255
        ref = hr.copy()
        ref[:, 10:30, 10:30] = 255 - ref[:, 10:30, 10:30]
        for folder, image in (("A", ref), ("B", hr), ("label", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            write_png(root / folder / f"{name}.png", image)
    return root


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[CliRunner]:
    """Run ``refdiff ARGS`` in this process: (exit code, stdout, stderr)."""
    from refdiff_cli.cli import run

    package_logger = logging.getLogger("refdiff_cli")
    saved = (package_logger.handlers[:], package_logger.propagate, package_logger.level)
    previous_sigterm = signal.getsignal(signal.SIGTERM)

    def invoke(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    yield invoke
    package_logger.handlers[:], package_logger.propagate, package_logger.level = saved
    signal.signal(signal.SIGTERM, previous_sigterm)


def test_json_on_stdout_csv_and_figure(tmp_path: Path) -> None:
    root = make_cd(tmp_path / "cd")
    result = run_cli(
        [
            "evaluate",
            str(root),
            "--scale",
            "8",
            "--methods",
            "bicubic,ref,hpf",
            "--csv",
            str(tmp_path / "m.csv"),
            "--figure",
            str(tmp_path / "f.png"),
            "--json",
        ]
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds the JSON document and nothing else
    assert data["n_images"] == 2 and data["scale"] == 8 and data["layout"] == "cd"
    assert set(data["methods"]) == {"bicubic", "ref", "hpf"}
    assert data["settings"]["methods"] == ["bicubic", "ref", "hpf"]  # the report order
    assert data["methods"]["ref"]["unchanged"]["psnr_capped"] == 2
    assert "LPIPS is skipped" in result.stderr
    assert "2/2 images" in result.stderr  # plain progress lines off a terminal
    with (tmp_path / "m.csv").open(newline="") as stream:
        assert len(list(csv.DictReader(stream))) == 2 * 3 * 3
    figure = read_image(tmp_path / "f.png")  # panels plus the label strips (issue 12)
    assert figure.shape[1] > 2 * 64 + 4 and figure.shape[2] > 7 * 64 + 6 * 4


def test_table_on_stdout(tmp_path: Path, cli: CliRunner) -> None:
    root = make_cd(tmp_path / "cd")
    code, out, _ = cli("evaluate", root, "--scale", "8", "--methods", "bicubic,ref")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["method", "region", "n", "PSNR", "SSIM"]
    assert lines[1].split()[:3] == ["bicubic", "all", "2"]
    assert any(line.split()[:2] == ["ref", "all"] for line in lines)
    assert "100.00" in out  # the ref copy is exact in unchanged areas (capped PSNR)
    assert "2 image(s) at x8" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--methods", "model", "--model", "missing.safetensors"], 3, "missing.safetensors"),
        (["--methods", "bicubic,esrgan"], 2, "unknown method(s) esrgan"),
        (["--sr-dir", "nodir"], 2, "is not NAME=DIR"),
        (["--sr-dir", "x=does-not-exist"], 3, "the folder does not exist"),
        (["--layout", "paper"], 3, "has no LR folder"),
        (["--csv", "no/such/folder/m.csv"], 4, "does not exist"),
    ],
)
def test_error_exit_codes(
    tmp_path: Path, cli: CliRunner, args: list[str], code: int, message: str
) -> None:
    root = make_cd(tmp_path / "cd")
    got, out, err = cli("evaluate", root, "--scale", "8", *args)
    assert got == code, err
    assert message in err and out == ""


def test_model_method_without_any_model_is_a_usage_error(
    tmp_path: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("refdiff_cli.evaluate.run.default_model_installed", lambda: False)
    code, _, err = cli("evaluate", make_cd(tmp_path / "cd"), "--methods", "bicubic,model")
    assert code == 2 and "no model is installed" in err and "--model PATH" in err


def sample_set(folder: Path) -> Path:
    """CSV of the bundled sample scene: ref in EPSG:3857, mask at 1 m, HR on the output grid."""
    listing = folder / "sets.csv"
    names = {c: SAMPLE_DATA / f"{c}.tif" for c in ("lr", "ref", "hr")}
    listing.write_text(
        "lr,ref,mask,hr\n"
        + f"{names['lr']},{names['ref']},{SAMPLE_DATA / 'cd.tif'},{names['hr']}\n"
    )
    return listing


def test_geotiff_sets_measure_what_upscale_writes(tmp_path: Path) -> None:
    listing = sample_set(tmp_path)
    upscaled = tmp_path / "upscaled"
    upscaled.mkdir()
    job = UpscaleJob(
        lr=SAMPLE_DATA / "lr.tif",
        ref=SAMPLE_DATA / "ref.tif",
        mask=SAMPLE_DATA / "cd.tif",
        output=upscaled / "lr_sr.tif",
    )
    upscale(job, BicubicEngine(8), UpscaleOptions(engine="bicubic", scale=8))
    options = EvalOptions(
        methods=("bicubic", "ref", "hpf"),
        sr_dirs=(("upscaled", upscaled),),
        scale=8,
        figure_path=tmp_path / "f.png",
    )
    report = evaluate(listing, options)
    assert report.layout == "csv" and report.images == ("lr",) and report.scale == 8
    # The in-memory route scores exactly the file refdiff upscale writes.
    assert report.methods["bicubic"] == report.methods["upscaled"]
    bicubic = report.methods["bicubic"]["all"]
    assert bicubic["pixels"] == 384 * 384 and 20 < bicubic["psnr"] < 40
    changed = report.methods["bicubic"]["changed"]
    assert changed["n_images"] == 1 and 0 < changed["pixels"] < 384 * 384
    # The ref is warped from EPSG:3857 (cubic): close to the HR where nothing changed.
    assert report.methods["ref"]["unchanged"]["psnr"] > report.methods["ref"]["changed"]["psnr"]
    height = read_image(tmp_path / "f.png").shape[1]
    assert 256 < height < 2 * 256  # one row of 256 px crops, plus its label strips


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_geotiff_set_with_a_bare_mask_needs_the_mask_grid(tmp_path: Path) -> None:
    import rasterio

    from refdiff_cli.errors import InputError

    with rasterio.open(SAMPLE_DATA / "cd.tif") as src:
        mask = np.repeat(np.repeat(src.read(), 2, axis=1), 2, axis=2)  # (1, 384, 384) at 0.5 m
    bare = tmp_path / "bare.tif"
    with rasterio.open(
        bare, "w", driver="GTiff", width=384, height=384, count=1, dtype="uint8"
    ) as dst:
        dst.write(mask)
    listing = tmp_path / "bare.csv"
    listing.write_text(
        "lr,ref,mask,hr\n"
        f"{SAMPLE_DATA / 'lr.tif'},{SAMPLE_DATA / 'ref.tif'},{bare},{SAMPLE_DATA / 'hr.tif'}\n"
    )
    with pytest.raises(InputError, match="--mask-grid"):
        evaluate(listing, EvalOptions(methods=("bicubic",), scale=8))
    borrowed = evaluate(listing, EvalOptions(methods=("bicubic",), scale=8, mask_grid="lr"))
    reference = evaluate(sample_set(tmp_path), EvalOptions(methods=("bicubic",), scale=8))
    assert borrowed.methods == reference.methods


@pytest.mark.real_data
def test_levir_bicubic_and_ref(shared_data: Path) -> None:
    levir = shared_data / "cd_pairs" / "levir"
    result = run_cli(
        [
            *("evaluate", str(levir), "--layout", "cd", "--scale", "8"),
            *("--methods", "bicubic,ref", "--json"),
        ]
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["n_images"] == 6 and data["counts"]["images"] == 6
    bicubic, ref = data["methods"]["bicubic"], data["methods"]["ref"]
    assert 15 < bicubic["all"]["psnr"] < 40
    assert 0 < bicubic["all"]["ssim"] < 1
    # LEVIR's two dates differ in light and season: copying the old image is far worse.
    assert ref["all"]["psnr"] < bicubic["all"]["psnr"]
    assert bicubic["changed"]["n_images"] <= 6 and bicubic["changed"]["pixels"] > 0
