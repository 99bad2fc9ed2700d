"""Shared pytest fixtures: raster factory, shared-data location, CLI runner in a subprocess."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "refdiff",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "refdiff"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample_data"
#: ``refdiff upscale`` arguments for the sample scene: its LR, ``--ref`` and ``--mask``.
SAMPLE_INPUTS = [
    str(SAMPLE_DATA / "lr.tif"),
    "--ref",
    str(SAMPLE_DATA / "ref.tif"),
    "--mask",
    str(SAMPLE_DATA / "cd.tif"),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip gpu tests without CUDA, whatever -m selects."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def restore_package_logger() -> Iterator[None]:
    """Undo ``render.configure_logging`` of in-process CLI runs, so caplog sees later records."""
    logger = logging.getLogger("refdiff_cli")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared real-data folder, or skip when it is absent."""
    env = os.environ.get("REFDIFF_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        pytest.skip(f"real data not found at {path} (set REFDIFF_SHARED_DATA)")
    return path


RasterFactory = Callable[..., Path]


@pytest.fixture
def make_raster(tmp_path: Path) -> RasterFactory:
    """Return ``make(name, array, *, crs, transform, nodata, **profile) -> Path``.

    ``array`` is (bands, rows, cols) or (rows, cols). Defaults: EPSG:32633 (UTM 33N), a
    north-up transform with 4 m pixels at (500000, 5000000), no nodata, tiled deflate GTiff.
    Pass ``crs=None`` or ``transform=None`` to leave georeferencing out.
    """
    import rasterio
    from affine import Affine

    default_transform = Affine(4.0, 0.0, 500_000.0, 0.0, -4.0, 5_000_000.0)

    def make(
        name: str,
        array: np.ndarray,
        *,
        crs: Any = "EPSG:32633",
        transform: Any = default_transform,
        nodata: float | None = None,
        **profile: Any,
    ) -> Path:
        data = array[None] if array.ndim == 2 else array
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {
            "driver": "GTiff",
            "width": data.shape[2],
            "height": data.shape[1],
            "count": data.shape[0],
            "dtype": data.dtype,
            "nodata": nodata,
        }
        if crs is not None:
            options["crs"] = crs
        if transform is not None:
            options["transform"] = transform
        if data.shape[1] >= 16 and data.shape[2] >= 16:
            options.update(tiled=True, blockxsize=16, blockysize=16, compress="deflate")
        options.update(profile)
        with rasterio.open(path, "w", **options) as dst:
            dst.write(data)
        return path

    return make


def zero_sample_mask(path: Path) -> Path:
    """An all-zero ("nothing changed") copy of the sample scene's change mask, at ``path``."""
    import rasterio

    with rasterio.open(SAMPLE_DATA / "cd.tif") as src:
        profile, shape = src.profile, (src.count, src.height, src.width)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros(shape, dtype=np.uint8))
    return path


def run_cli(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 240,
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m refdiff_cli ARGS`` in a subprocess (real exit codes, signals, fds).

    ``file_size_limit`` (bytes) is the child's RLIMIT_FSIZE, as ``ulimit -f`` sets it: a
    write past it fails with EFBIG (Python ignores SIGXFSZ).
    """
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120", **(env or {})}

    def limit_file_size() -> None:
        import resource

        if file_size_limit is not None:
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, hard))

    return subprocess.run(
        [sys.executable, "-m", "refdiff_cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
        preexec_fn=None if file_size_limit is None else limit_file_size,
    )


def tiny_card(**changes: Any) -> Any:
    """A valid model card for the "tiny" preset at x8 (RGB, binary masks, 2-step Heun)."""
    import dataclasses

    from refdiff_cli import __version__
    from refdiff_cli.config import SamplerConfig, to_dict
    from refdiff_cli.data.masks import BINARY
    from refdiff_cli.data.normalize import Normalization
    from refdiff_cli.model.card import ModelCard
    from refdiff_cli.model.network_config import PRESETS

    card = ModelCard(
        name="refdiff-tiny-test",
        preset="tiny",
        network=PRESETS["tiny"].to_dict(),
        scale=8,
        bands=("red", "green", "blue"),
        normalization=Normalization().to_dict(),
        mask_encoding=BINARY.to_dict(),
        train_tile_px=64,
        tile_px=64,
        overlap_px=32,
        margin_px=8,
        sampler=to_dict(SamplerConfig(steps=2)),
        refdiff_version=__version__,
    )
    return dataclasses.replace(card, **changes)


def write_tiny_model(
    path: Path, *, seed: int = 0, lively: bool = False, **card_changes: Any
) -> Path:
    """Save a randomly initialised tiny network with ``tiny_card(**card_changes)``.

    ``lively`` redraws every convolution at full xavier scale, so the network's output is far
    from EDM's near-zero initial output and depends visibly on every input and on the noise.
    """
    import torch

    from refdiff_cli.model.checkpoint import save_model
    from refdiff_cli.model.layers import Conv2d
    from refdiff_cli.model.network import RefDiffUNet
    from refdiff_cli.model.network_config import PRESETS

    net = RefDiffUNet(PRESETS["tiny"], seed=seed)
    if lively:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, Conv2d):
                    torch.nn.init.xavier_uniform_(module.weight, generator=generator)
    save_model(path, net, tiny_card(**card_changes))
    return path
