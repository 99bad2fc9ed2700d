"""LPIPS: distance properties, an independent functional re-computation, strict weight loading."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from refdiff_cli.errors import ModelError
from refdiff_cli.metrics import perceptual
from refdiff_cli.metrics.perceptual import (
    EXPECTED_SHAPES,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    load_lpips,
    to_lpips_range,
)


def random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-initialised AlexNet convolutions and non-negative lin weights."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in EXPECTED_SHAPES.items():
        if key.startswith("lin"):
            tensors[key] = torch.rand(shape, generator=gen)
        elif key.endswith("bias"):
            tensors[key] = 0.01 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            tensors[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return tensors


def write(
    tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "lpips.safetensors"
) -> Path:
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return random_weights()


@pytest.fixture(scope="module")
def model(weights: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory):
    return load_lpips(write(tmp_path_factory.mktemp("lpips"), weights))


def images(seed: int, shape: tuple[int, int] = (48, 64)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, size=(3, *shape)).astype(np.float32)  # (3, H, W)
    b = np.clip(a + rng.normal(0, 0.3, size=a.shape), -1, 1).astype(np.float32)
    return a, b


def reference_map(w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS spatial map written out with torch.nn.functional, independently of the module."""
    shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)

    def taps(img: torch.Tensor) -> list[torch.Tensor]:
        h = (img - shift) / scale
        h1 = F.relu(F.conv2d(h, w["features.0.weight"], w["features.0.bias"], stride=4, padding=2))
        h = F.max_pool2d(h1, 3, 2)
        h2 = F.relu(F.conv2d(h, w["features.3.weight"], w["features.3.bias"], padding=2))
        h = F.max_pool2d(h2, 3, 2)
        h3 = F.relu(F.conv2d(h, w["features.6.weight"], w["features.6.bias"], padding=1))
        h4 = F.relu(F.conv2d(h3, w["features.8.weight"], w["features.8.bias"], padding=1))
        h5 = F.relu(F.conv2d(h4, w["features.10.weight"], w["features.10.bias"], padding=1))
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in (h1, h2, h3, h4, h5)]

    total = torch.zeros(x.shape[0], 1, *x.shape[2:])
    for k, (fa, fb) in enumerate(zip(taps(x), taps(y), strict=True)):
        layer = (w[f"lin{k}.weight"][0, :, 0, 0].view(1, -1, 1, 1) * (fa - fb) ** 2).sum(1, True)
        total += F.interpolate(layer, size=x.shape[2:], mode="bilinear", align_corners=False)
    return total


# --- distance ------------------------------------------------------------------------------------


def test_loaded_model_is_frozen_in_eval_mode(model) -> None:
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_identical_is_zero_and_different_is_positive(model) -> None:
    a, b = images(1)
    assert model.distance(a, a) == 0.0
    d = model.distance(a, b)
    assert d > 0.0
    assert model.distance(b, a) == pytest.approx(d, rel=1e-6)
    # A larger perturbation is farther away.
    rng = np.random.default_rng(9)
    far = np.clip(a + rng.normal(0, 1.0, a.shape), -1, 1).astype(np.float32)
    assert model.distance(a, far) > d


def test_map_matches_independent_computation(model, weights) -> None:
    a, b = images(2)
    x, y = torch.from_numpy(a)[None], torch.from_numpy(b)[None]
    with torch.no_grad():
        got = model(x, y)
    want = reference_map(weights, x, y)
    assert got.shape == (1, 1, 48, 64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_region_average_is_consistent_with_the_map(model) -> None:
    a, b = images(3)
    with torch.no_grad():
        dist_map = model(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0, 0].double()
    region = np.zeros((48, 64), dtype=bool)
    region[10:30, 5:40] = True
    expected = float(dist_map.numpy()[region].mean())
    assert model.distance(a, b, region=region) == pytest.approx(expected, rel=1e-6)
    assert model.distance(a, b) == pytest.approx(float(dist_map.mean()), rel=1e-6)
    assert model.distance(a, b, region=np.ones((48, 64), np.uint8)) == pytest.approx(
        model.distance(a, b), rel=1e-9
    )
    assert np.isnan(model.distance(a, b, region=np.zeros((48, 64), dtype=bool)))


def test_input_checks(model) -> None:
    a, b = images(4)
    with pytest.raises(ValueError, match="3, H, W"):
        model.distance(a[:2], b[:2])
    small_a, small_b = images(4, shape=(30, 40))
    with pytest.raises(ValueError, match="at least 31x31"):
        model.distance(small_a, small_b)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.distance(a * 255, b)
    with pytest.raises(ValueError, match="region has shape"):
        model.distance(a, b, region=np.ones((48, 63), bool))


def test_to_lpips_range() -> None:
    img = np.array([0, 127.5, 255, 300, -5], dtype=np.float64).reshape(1, 1, 5)
    out = to_lpips_range(np.repeat(img, 3, axis=0), data_range=255)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-1, 0, 1, 1, -1])
    with pytest.raises(ValueError, match="data_range"):
        to_lpips_range(img, data_range=0)


# --- loading -------------------------------------------------------------------------------------


def test_missing_key(tmp_path: Path, weights) -> None:
    broken = {k: v for k, v in weights.items() if k != "lin3.weight"}
    with pytest.raises(ModelError, match=r"lacks tensor 'lin3.weight'"):
        load_lpips(write(tmp_path, broken))


def test_unexpected_key(tmp_path: Path, weights) -> None:
    extra = {**weights, "lin0.model.1.weight": weights["lin0.weight"].clone()}
    with pytest.raises(ModelError, match="unexpected tensor"):
        load_lpips(write(tmp_path, extra))


def test_wrong_shape(tmp_path: Path, weights) -> None:
    broken = {**weights, "features.3.weight": torch.zeros(192, 64, 3, 3)}
    with pytest.raises(ModelError, match=r"features\.3\.weight has shape \(192, 64, 3, 3\)"):
        load_lpips(write(tmp_path, broken))


def test_nan_weights(tmp_path: Path, weights) -> None:
    bad = weights["features.6.bias"].clone()
    bad[7] = float("nan")
    with pytest.raises(ModelError, match=r"features\.6\.bias has NaN"):
        load_lpips(write(tmp_path, {**weights, "features.6.bias": bad}))


def test_negative_lin_weights(tmp_path: Path, weights) -> None:
    with pytest.raises(ModelError, match=r"lin1\.weight has negative"):
        load_lpips(write(tmp_path, {**weights, "lin1.weight": -weights["lin1.weight"]}))


def test_integer_weights_are_refused(tmp_path: Path, weights) -> None:
    ints = {**weights, "features.0.bias": torch.zeros(64, dtype=torch.int32)}
    with pytest.raises(ModelError, match="not float"):
        load_lpips(write(tmp_path, ints))


def test_half_precision_file_loads_as_float32(tmp_path: Path, weights) -> None:
    model = load_lpips(write(tmp_path, {k: v.half() for k, v in weights.items()}))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("kind", ["pickle", "torch_save"])
def test_pickle_renamed_safetensors_is_refused(tmp_path: Path, weights, kind: str) -> None:
    path = tmp_path / "lpips.safetensors"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"lin0.weight": weights["lin0.weight"].numpy()}, protocol=4))
    else:
        torch.save(weights, path)
    with pytest.raises(ModelError, match="pickle") as info:
        load_lpips(path)
    assert str(path) in str(info.value)


def test_unreadable_files(tmp_path: Path, weights) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_lpips(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelError, match="not a safetensors file"):
        load_lpips(garbage)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(write(tmp_path, weights).read_bytes()[:4000])
    with pytest.raises(ModelError, match=r"truncated\.safetensors"):
        load_lpips(truncated)


def test_module_imports_nothing_network_related() -> None:
    source = Path(perceptual.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    network = {"urllib", "urllib3", "requests", "httpx", "http", "socket", "aiohttp", "ftplib"}
    hubs = {"torchvision", "huggingface_hub", "lpips", "pickle"}
    offenders = {name for name in imported if name.split(".")[0] in network | hubs}
    assert not offenders, offenders
    for needle in ("torch.hub", "://", "load_state_dict_from_url", "urlopen", "download_"):
        assert needle not in source, f"perceptual.py mentions {needle!r}"
