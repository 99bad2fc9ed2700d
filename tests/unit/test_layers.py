"""Import rules of docs/architecture.md: every module imports only from its own layer or below."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "refdiff_cli"

UI_ONLY = {"typer", "rich", "tqdm", "click"}
GEO_ONLY = {"rasterio", "affine", "pyproj", "shapely"}

# Layer of each module (path relative to the package, without .py); higher may import lower.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "__main__": 4,
    "api": 4,
    "errors": 0,
    "config": 0,
    "events": 0,
    "files": 0,
    "data/tiling": 1,
    "metrics/scores": 1,
    "reference/guided": 1,
    "reference/change": 1,
    "reference/trust": 1,
    "data/normalize": 1,
    "data/degrade": 1,
    "data/masks": 1,
    "data/synthesize": 1,
    "model/network": 1,
    "model/precond": 1,
    "model/card": 1,
    "diffusion/sampler": 1,
    "diffusion/noise": 1,
    "diffusion/loss": 1,
    "geo/env": 2,
    "geo/grid": 2,
    "geo/read": 2,
    "geo/write": 2,
    "geo/profiles": 2,
    "geo/images": 2,
    "geo/tiffcheck": 2,
    "geo/band_names": 2,
    "upscale/journal": 2,
    "model/checkpoint": 2,
    "model/device": 1,
    "metrics/perceptual": 2,
    "datasets/chips": 2,
    "datasets/shards": 2,
    "datasets/layouts": 2,
    "prepare/run": 3,
    "prepare/sources": 3,
    "prepare/read": 3,
    "upscale/engines": 3,
    "upscale/bands": 3,
    "upscale/run": 3,
    "upscale/batch": 3,
    "upscale/distributed": 3,
    "train/run": 3,
    "train/plan": 3,
    "train/state": 3,
    "train/validation": 3,
    "train/references": 3,
    "evaluate/run": 3,
    "evaluate/options": 3,
    "evaluate/inputs": 3,
    "evaluate/methods": 3,
    "evaluate/report": 3,
}


def module_key(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts
    if parts[0] == "cli":
        return "cli"
    if parts[-1] == "__init__" and len(parts) > 1:
        return "/".join(parts[:-1]) + "/__init__"
    return "/".join(parts)


def layer_of(key: str) -> int:
    if key == "cli":
        return 4
    if key.endswith("/__init__"):
        return 0
    return LAYERS[key]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def internal_key(module: str) -> str | None:
    """'refdiff_cli.geo.read' -> 'geo/read'; None for third-party modules."""
    if not module.startswith("refdiff_cli"):
        return None
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    if parts[0] == "cli":
        return "cli"
    candidate = "/".join(parts)
    if candidate in LAYERS:
        return candidate
    return "/".join(parts) + "/__init__"


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unknown = [
        module_key(p)
        for p in MODULES
        if module_key(p) != "cli"
        and not module_key(p).endswith("/__init__")
        and module_key(p) not in LAYERS
    ]
    assert not unknown, f"add these modules to LAYERS (and docs/architecture.md): {unknown}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downward(path: Path) -> None:
    key = module_key(path)
    layer = layer_of(key)
    for module in imports_of(path):
        top = module.split(".")[0]
        if top in UI_ONLY:
            assert key == "cli", f"{key} imports {module}: only the CLI may import UI libraries"
        if top in GEO_ONLY:
            assert key.startswith("geo/") or key == "cli", (
                f"{key} imports {module}: only refdiff_cli/geo may import {top}"
            )
        target = internal_key(module)
        if target is not None and target != key:
            assert layer_of(target) <= layer, (
                f"{key} (layer {layer}) imports {module} (layer {layer_of(target)}): "
                "imports must point downward"
            )
        if layer == 0:
            assert top in sys.stdlib_module_names or target is not None, (
                f"{key} is a layer-0 contract module and may only import the standard library"
            )


def test_no_print_or_exit_below_the_cli() -> None:
    offenders = []
    for path in MODULES:
        if module_key(path) in ("cli", "__main__"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
            ):
                offenders.append(f"{path.name}:{node.lineno} print()")
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "exit"
                and getattr(node.value, "id", "") == "sys"
            ):
                offenders.append(f"{path.name}:{node.lineno} sys.exit")
    assert not offenders, offenders


def test_no_pickle_loading_in_the_product() -> None:
    offenders = []
    for path in MODULES:
        text = path.read_text(encoding="utf-8")
        for needle in ("torch.load(", "pickle.load", "pickle.loads", "import pickle"):
            if needle in text:
                offenders.append(f"{path.relative_to(PACKAGE)}: {needle}")
    assert not offenders, f"pickle-based loading is forbidden: {offenders}"


def test_importing_the_package_is_light() -> None:
    code = (
        "import sys, refdiff_cli, refdiff_cli.cli;"
        "heavy = [m for m in ('torch', 'rasterio') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"importing the CLI pulled in: {result.stdout.strip()}"
