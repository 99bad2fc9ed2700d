"""The layout rules of docs/architecture.md, checked on the package's source.

``violations(root)`` reads every module under ``root`` with ``ast`` (nothing is imported) and
lists each broken rule; the product must have none, and a copy of it with planted violations
must have exactly those.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "refdiff_cli"

UI_ONLY = {"typer", "rich", "tqdm", "click"}
GEO_ONLY = {"rasterio", "affine", "pyproj", "shapely"}

#: The only modules at the top of the package: the contracts (standard library only) and the
#: two entry points (the command line, the Python API). Everything else lives in a package.
CONTRACTS = {"__init__", "config", "errors", "events", "files"}
ENTRY_POINTS = {"__main__", "api"}

#: Layer of each top-level package or module; a module may import its own layer or below.
LAYERS: dict[str, int] = {
    **dict.fromkeys(CONTRACTS, 0),
    # pure cores: numpy/torch maths, no files
    "data": 1,
    "diffusion": 1,
    "model": 1,
    "reference": 1,
    "metrics": 1,
    # adapters: files and formats
    "geo": 2,
    "datasets": 2,
    # tools
    "upscale": 3,
    "evaluate": 3,
    "train": 3,
    "prepare": 3,
    # user interfaces
    "cli": 4,
    "api": 4,
    "__main__": 4,
}
#: Modules whose layer differs from their package's: adapters that read files.
MODULE_LAYERS = {"model/checkpoint": 2, "metrics/perceptual": 2}
TOOLS = {name for name, layer in LAYERS.items() if layer == 3}
#: The one tool that uses another: evaluate runs its methods through upscale's engines and
#: tiled pipeline, so that it scores exactly what upscale writes.
TOOL_USES = {"evaluate": {"upscale"}}
MAX_LINES = 450


def module_key(root: Path, path: Path) -> str:
    """'upscale/run', 'config', 'geo/__init__' for files under ``root``."""
    return path.relative_to(root).with_suffix("").as_posix()


def group_of(key: str) -> str:
    return key.split("/")[0]


def layer_of(key: str) -> int:
    return MODULE_LAYERS.get(key, LAYERS[group_of(key)])


def internal_imports(root: Path, path: Path) -> tuple[set[str], set[str]]:
    """(third-party top-level names, refdiff_cli module keys) that ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    external: set[str] = set()
    internal: set[str] = set()

    def add(module: str) -> None:
        parts = module.split(".")
        if parts[0] != root.name:
            external.add(parts[0])
        elif len(parts) > 1:
            internal.add("/".join(parts[1:]))
        else:
            internal.add("__init__")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # "from refdiff_cli.upscale import engines": a module
                submodule = root.parent / (node.module + "." + alias.name).replace(".", "/")
                is_module = submodule.with_suffix(".py").exists() or submodule.is_dir()
                add(node.module + "." + alias.name if is_module else node.module)
    return external, internal


def violations(root: Path) -> list[str]:
    """Every broken layout rule under the package folder ``root``, one line each."""
    found: list[str] = []
    for path in sorted(root.glob("*.py")):
        if path.stem not in CONTRACTS | ENTRY_POINTS:
            found.append(f"{path.name}: top-level module; put it in a package")
    for path in sorted(root.rglob("*.py")):
        key = module_key(root, path)
        if "/" not in key and key not in LAYERS:
            continue  # reported above
        if group_of(key) not in LAYERS:
            found.append(f"{key}: package {group_of(key)!r} has no layer")
            continue
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            found.append(f"{key}: {lines} lines (at most {MAX_LINES})")
        external, internal = internal_imports(root, path)
        for top in external:
            if top in UI_ONLY and group_of(key) != "cli":
                found.append(f"{key} imports {top}: only cli/ may import UI libraries")
            if top in GEO_ONLY and group_of(key) not in ("geo", "cli"):
                found.append(f"{key} imports {top}: only geo/ may import {top}")
            if layer_of(key) == 0 and top not in sys.stdlib_module_names:
                found.append(f"{key} imports {top}: contracts import the standard library only")
        for target in internal:
            if group_of(target) not in LAYERS or group_of(target) == group_of(key):
                continue
            if layer_of(target) > layer_of(key):
                found.append(
                    f"{key} (layer {layer_of(key)}) imports {target} "
                    f"(layer {layer_of(target)}): imports must point downward"
                )
            elif (
                group_of(target) in TOOLS
                and group_of(key) in TOOLS
                and group_of(target) not in TOOL_USES.get(group_of(key), set())
            ):
                found.append(f"{key} imports {target}: one tool may not use another")
    return found


def test_the_package_follows_the_layout() -> None:
    assert violations(PACKAGE) == []


def planted_copy(tmp_path: Path) -> Path:
    """A copy of the package (without its weights) to plant violations in."""
    root = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    return root


def plant(path: Path, line: str) -> None:
    """Put ``line`` at the top of ``path``; the file must stay within the line limit, so that
    the plant is the only rule it breaks."""
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) < MAX_LINES, f"{path} is at the line limit: plant elsewhere"
    path.write_text(line + "\n" + text, encoding="utf-8")


def test_planted_violations_are_each_reported(tmp_path: Path) -> None:
    root = planted_copy(tmp_path)
    plant(root / "reference" / "guided.py", "from refdiff_cli.upscale import engines")
    plant(root / "train" / "run.py", "from refdiff_cli.evaluate.run import evaluate")
    plant(root / "data" / "normalize.py", "import rasterio")
    plant(root / "model" / "card.py", "import rich")
    plant(root / "errors.py", "import numpy")
    (root / "helpers.py").write_text('"""Planted."""\n', encoding="utf-8")
    (root / "upscale" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1), encoding="utf-8")
    found = violations(root)
    expected = [
        "reference/guided (layer 1) imports upscale/engines (layer 3)",
        "train/run imports evaluate/run: one tool may not use another",
        "data/normalize imports rasterio: only geo/",
        "model/card imports rich: only cli/",
        "errors imports numpy: contracts import the standard library only",
        "helpers.py: top-level module",
        f"upscale/long: {MAX_LINES + 1} lines",
    ]
    for needle in expected:
        assert any(needle in line for line in found), (needle, found)
    assert len(found) == len(expected), found


def test_evaluate_may_use_upscale_but_not_the_reverse(tmp_path: Path) -> None:
    root = planted_copy(tmp_path)
    plant(root / "evaluate" / "run.py", "from refdiff_cli.upscale import engines")
    assert violations(root) == []
    plant(root / "upscale" / "run.py", "from refdiff_cli.evaluate import report")
    assert violations(root) == ["upscale/run imports evaluate/report: one tool may not use another"]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_no_print_or_exit_below_the_cli() -> None:
    offenders = []
    for path in MODULES:
        if group_of(module_key(PACKAGE, path)) in ("cli", "__main__"):
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


@pytest.mark.parametrize("module", ["refdiff_cli", "refdiff_cli.cli", "refdiff_cli.api"])
def test_importing_the_package_is_light(module: str) -> None:
    code = (
        f"import sys, {module};"
        "heavy = [m for m in ('torch', 'rasterio') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"importing {module} pulled in: {result.stdout.strip()}"
