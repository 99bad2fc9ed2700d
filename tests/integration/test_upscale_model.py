"""`refdiff upscale --engine diffusion` end to end with a tiny random model: determinism, seams."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from refdiff_cli.config import SamplerConfig
from refdiff_cli.data import masks, normalize
from refdiff_cli.data.tiling import TilePlan, plan_tiles
from refdiff_cli.diffusion.noise import PixelNoise, make_noise_fn
from refdiff_cli.diffusion.sampler import initial_state, sample
from refdiff_cli.files import file_sha256
from refdiff_cli.model.checkpoint import load_model, save_model
from refdiff_cli.upscale.engines import EngineBatch
from refdiff_cli.upscale.pipeline import ModelSpace, sr_strips
from tests.conftest import SAMPLE_DATA, SAMPLE_INPUTS, run_cli, write_tiny_model

#: The sample's LR cropped to its top-left 12 x 12 px: a 96 x 96 output, 4 tiles of 64 px.
SMALL_LR_PX = 12


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """SAMPLE_INPUTS with the LR cut to SMALL_LR_PX (the reference and mask cover more: fine)."""
    from rasterio.windows import Window

    path = tmp_path_factory.mktemp("small") / "lr.tif"
    window = Window(0, 0, SMALL_LR_PX, SMALL_LR_PX)
    with rasterio.open(SAMPLE_DATA / "lr.tif") as src:
        profile = {**src.profile, "width": SMALL_LR_PX, "height": SMALL_LR_PX}
        profile["transform"] = src.window_transform(window)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return [str(path), *SAMPLE_INPUTS[1:]]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", lively=True)


def upscale(model: Path, out: Path, *extra: str, sample: list[str] = SAMPLE_INPUTS) -> np.ndarray:
    result = run_cli(
        [
            "upscale",
            *sample,
            "-o",
            str(out),
            "--model",
            str(model),
            "--steps",
            "2",
            "--churn",
            "5",
            *extra,
        ]
    )
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as sr:
        return sr.read()


def test_diffusion_upscale_runs_and_is_deterministic_for_any_batch_size(
    model: Path, small_sample: list[str], tmp_path: Path
) -> None:
    # 4 tiles: batches of 3 are one full and one partial batch. (It ran 16 tiles of 128 px,
    # 80 s, and hit its timeout on a loaded machine.)
    tiles = ("--tile", "64", "--overlap", "32")
    runs = {
        name: upscale(model, tmp_path / f"{name}.tif", *args, *tiles, sample=small_sample)
        for name, args in (
            ("b1", ("--seed", "7", "--batch-size", "1")),
            ("b3", ("--seed", "7", "--batch-size", "3")),
            ("other", ("--seed", "8", "--batch-size", "3")),
        )
    }
    assert np.array_equal(runs["b1"], runs["b3"])  # two processes, two batch sizes: same bytes
    assert not np.array_equal(runs["b3"], runs["other"])
    assert runs["b1"].std() > 5  # the lively network produces a real image, not a flat grey
    with rasterio.open(tmp_path / "b1.tif") as sr:
        tags = sr.tags()
        assert tags["REFDIFF_MODEL_SHA256"] == file_sha256(model)
        assert json.loads(tags["REFDIFF_ENGINE"])["sampler"]["steps"] == 2
        assert tags["REFDIFF_SEED"] == "7"
        assert tags["REFDIFF_TILE_PX"] == "64"
        assert sr.shape == (8 * SMALL_LR_PX, 8 * SMALL_LR_PX)


def test_a_pinned_sha256_that_differs_is_refused(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    pinned = ["--model", str(model), "--model-sha256", "0" * 64]
    result = run_cli(["upscale", *SAMPLE_INPUTS, "-o", str(out), *pinned])
    assert result.returncode == 3
    assert "sha256" in result.stderr
    assert not out.exists()


def test_a_model_for_another_scale_is_refused(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "x16.safetensors", scale=16, tile_px=64)
    out = tmp_path / "sr.tif"
    result = run_cli(["upscale", *SAMPLE_INPUTS, "-o", str(out), "--model", str(model)])
    assert result.returncode == 3
    assert "x16" in result.stderr
    assert not out.exists()


class _ArrayReader:
    """Tiles of in-memory arrays: a flat LR, no ref, an all-changed mask."""

    def __init__(self, size: int, scale: int) -> None:
        self.scale = scale
        self.size = size

    def read_lr(self, window):  # type: ignore[no-untyped-def]
        return np.full((1, window.height, window.width), 100.0, np.float32), np.ones(
            (window.height, window.width), bool
        )

    def read_ref(self, window):  # type: ignore[no-untyped-def]
        return np.zeros((1, window.height, window.width), np.float32), np.zeros(
            (window.height, window.width), bool
        )

    def read_mask(self, window):  # type: ignore[no-untyped-def]
        return np.ones((window.height, window.width), np.float32), np.ones(
            (window.height, window.width), bool
        )


class _GaussianEngine:
    """Stand-in for the diffusion engine: the ideal denoiser of N(0, s^2) data with the real
    stochastic sampler; noise either from the global pixel field or drawn per tile."""

    name = "gaussian"
    sha256 = None
    bands = 1
    scale = 4
    margin_px = 0
    size_multiple = 1
    tile_px = 64
    overlap_px = 32
    normalization = normalize.Normalization()
    mask_channel = None

    def __init__(self, *, per_tile_noise: bool) -> None:
        self.per_tile_noise = per_tile_noise
        self.sampler = SamplerConfig(
            steps=8, S_churn=30.0, S_min=0.0, S_max=math.inf, sigma_max=20.0
        )

    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        b, _, h, w = batch.lr.shape
        shape = (h * self.scale, w * self.scale)
        if self.per_tile_noise:
            generators = [
                torch.Generator().manual_seed(batch.seed * 1000 + i + 17 * r + c)
                for i, (r, c) in enumerate(batch.origins)
            ]

            def noise(draw: int) -> torch.Tensor:
                return torch.stack([torch.randn((1, *shape), generator=g) for g in generators])
        else:
            noise = make_noise_fn(PixelNoise(batch.seed, 1), batch.origins, shape, None)
        s2 = 0.25

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return x * (s2 / (s2 + sigma[:, None, None, None] ** 2))

        x_T = initial_state("noise", self.sampler.sigma_max, noise(0), torch.zeros(b, 1, *shape))
        return sample(self.sampler, denoise, x_T, noise=noise)

    def describe(self) -> dict[str, object]:
        return {"engine": self.name}


def _band_stats(plan: TilePlan, image: np.ndarray) -> tuple[float, float]:
    """Texture std in the middle of overlap bands vs in tile interiors (columns)."""
    starts = plan.col_starts
    overlap_cols, inner_cols = [], []
    for left, right in itertools.pairwise(starts):
        end_left = left + plan.tile_px
        overlap_cols.append((right + end_left) // 2)  # middle of the overlap
        inner_cols.append(
            end_left
            + (right + plan.tile_px - end_left) // 2
            - plan.tile_px // 2
            + plan.overlap_px // 2
        )
    overlap = image[:, overlap_cols].std()
    inner = image[:, [c for c in inner_cols if 0 <= c < image.shape[1]]].std()
    return float(overlap), float(inner)


@pytest.mark.parametrize("per_tile_noise", [False, True])
def test_overlaps_have_the_texture_of_tile_interiors(per_tile_noise: bool) -> None:
    """Global noise field: no grid. Per-tile noise (the check can fail): overlaps go flat."""
    engine = _GaussianEngine(per_tile_noise=per_tile_noise)
    size = 512
    plan = plan_tiles((size, size), tile_px=64, overlap_px=32, margin_px=0, scale=4)
    space = ModelSpace(
        lr=normalize.BandScaling(low=(0.0,), high=(255.0,)),
        ref=normalize.BandScaling(low=(0.0,), high=(255.0,)),
        mask=masks.BINARY,
        mask_source="test",
    )
    reader = _ArrayReader(size // 4, 4)
    strips = list(sr_strips(reader, engine, plan, space, seed=3, batch_size=5, block_rows=64))
    image = np.concatenate([s.values[0] for s in strips])  # (H, W) DN
    image = (image - image.mean()) / 127.5  # back to model units, centred
    overlap, inner = _band_stats(plan, image)
    ratio = overlap / inner
    if per_tile_noise:
        assert ratio < 0.85, ratio  # averaging two independent samples flattens the overlap
    else:
        assert 0.9 < ratio < 1.1, ratio


def test_a_residual_model_adds_lr_up_back(small_sample: list[str], tmp_path: Path) -> None:
    """A residual model whose network outputs 0 denoises to LR_up: bicubic, within 1 DN."""
    path = write_tiny_model(tmp_path / "residual.safetensors", target="residual", sigma_data=0.2)
    loaded = load_model(path)
    with torch.no_grad():
        loaded.denoiser.net.head_conv.weight.zero_()
        loaded.denoiser.net.head_conv.bias.zero_()
    save_model(path, loaded.denoiser.net, loaded.card)
    common = ["upscale", *small_sample, "--tile", "64", "--overlap", "32"]
    model_out, bicubic_out = tmp_path / "model.tif", tmp_path / "bicubic.tif"
    result = run_cli(
        [*common, "-o", str(model_out), "--model", str(path), "--sampler", "euler", "--steps", "1"]
    )
    assert result.returncode == 0, result.stderr
    assert run_cli([*common, "-o", str(bicubic_out), "--engine", "bicubic"]).returncode == 0
    with rasterio.open(model_out) as a, rasterio.open(bicubic_out) as b:
        diff = np.abs(a.read().astype(int) - b.read().astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.1  # sigma_max 80: a 0.06 DN residual remains
    refused = run_cli(
        [*common, "-o", str(tmp_path / "x.tif"), "--model", str(path), "--start", "lr"]
    )
    assert refused.returncode == 2
    assert "residual" in refused.stderr


def test_a_mask_read_otherwise_than_the_model_was_trained_is_refused(
    model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sr.tif"
    grey = ["--model", str(model), "--mask-encoding", "grey"]
    result = run_cli(["upscale", *SAMPLE_INPUTS, "-o", str(out), *grey])
    assert result.returncode == 3, result.stderr
    assert "trained on binary change masks" in result.stderr
    assert "--mask-encoding binary" in result.stderr
    assert not out.exists()


@pytest.mark.slow  # torch.compile takes a minute or two on two shared cores
def test_compile_gives_the_eager_result_up_to_float_rounding(
    model: Path, small_sample: list[str], tmp_path: Path
) -> None:
    tiles = ("--tile", "64", "--overlap", "32")
    eager = upscale(model, tmp_path / "eager.tif", *tiles, sample=small_sample)
    compiled = upscale(model, tmp_path / "compiled.tif", *tiles, "--compile", sample=small_sample)
    difference = np.abs(eager.astype(np.int16) - compiled.astype(np.int16))
    assert difference.max() <= 1, difference.max()
    assert (difference > 0).mean() < 0.01


def test_compile_without_a_network_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "sr.tif"
    result = run_cli(["upscale", *SAMPLE_INPUTS, "-o", str(out), "--engine", "guided", "--compile"])
    assert result.returncode == 2, result.stderr
    assert "--compile" in result.stderr and "guided engine has none" in result.stderr
    assert not out.exists()
