"""Save and load model weights as safetensors with the model card in the metadata; never pickle.

Trust boundary: a safetensors file holds only tensors and strings, so loading one cannot run
code. Pickle-based files (``.pt``, ``.pkl``, ``.ckpt``) can, and are refused outright.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from refdiff_cli.errors import ModelError, OutputError
from refdiff_cli.files import atomic_path, file_sha256
from refdiff_cli.model.card import CARD_METADATA_KEY, ModelCard
from refdiff_cli.model.network import RefDiffUNet
from refdiff_cli.model.network_config import NetworkConfig
from refdiff_cli.model.precond import EDMPrecond

#: The model shipped inside the package, and the sha256 it must have.
DEFAULT_MODEL_PATH = (
    Path(__file__).resolve().parent.parent / "weights" / "refdiff-small-x8.safetensors"
)
DEFAULT_MODEL_SHA256 = "bdd947bb2dc2eb611b0db68ea7ca999193dd369f8fe047fdde6b499ab7b3bfad"
#: Inference tiling of the default model (output pixels), in place of its card's 256 / 64 / 16
#: written when it was packaged: its network is fully convolutional, so a tile costs the same
#: per pixel at any size and 512 px tiles recompute (512/448)^2 = 1.31 times the output area
#: instead of (256/192)^2 = 1.78 (``benchmarks/throughput.py`` at 2048^2: 0.43-0.55x the time,
#: +0.04 dB, +460 MiB peak). ``train_eval.default_tiling`` gives the same for such networks.
DEFAULT_MODEL_TILING = (512, 64, 16)  # tile_px, overlap_px, margin_px

#: safetensors headers are JSON objects; larger headers than this are not model files.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def default_model_installed() -> bool:
    """Whether this package ships a default model (its weights file and pinned sha256)."""
    return bool(DEFAULT_MODEL_SHA256) and DEFAULT_MODEL_PATH.is_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A validated model ready to denoise: network wrapped in EDM preconditioning."""

    denoiser: EDMPrecond
    card: ModelCard
    sha256: str
    path: Path


def save_model(path: Path, net: torch.nn.Module, card: ModelCard) -> str:
    """Write ``net``'s weights and ``card`` to ``path`` atomically; return the file's sha256.

    Tensors are stored as they are (float32 for refdiff's networks), contiguous and detached.
    The file appears under its final name only once complete (temp file + fsync + rename).
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    _check_finite(tensors, path)
    try:
        with atomic_path(path) as temp:
            save_file(tensors, str(temp), metadata={CARD_METADATA_KEY: card.to_json()})
    except OSError as exc:
        raise OutputError(f"cannot write model file {path}: {exc.strerror or exc}") from exc
    return file_sha256(path)


def read_card(path: Path) -> ModelCard:
    """Read and validate only the card of a model file (no tensors are loaded)."""
    _check_is_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as exc:
        raise ModelError(f"model file {path} is corrupt: {exc}") from exc
    if CARD_METADATA_KEY not in metadata:
        raise ModelError(
            f"model file {path} has no refdiff model card",
            hint="models must be written by `refdiff train`",
        )
    return ModelCard.from_json(metadata[CARD_METADATA_KEY])


def load_model(
    path: Path | None = None,
    *,
    expected_sha256: str | None = None,
    scale: int | None = None,
    bands: int | None = None,
) -> LoadedModel:
    """Load and validate a model file onto the CPU, in eval mode.

    Args:
        path: a ``.safetensors`` model file; None loads the default model shipped in the package,
            whose sha256 is pinned.
        expected_sha256: refuse the file unless its sha256 equals this (hex, case-insensitive).
        scale: refuse a model trained for another scale factor.
        bands: refuse a model that takes another number of image bands.

    The default model's card gets ``DEFAULT_MODEL_TILING`` (whatever path it is loaded from).

    Raises:
        ModelError: missing, pickled, corrupt, tampered or mismatched files, naming the problem.
    """
    if path is None:
        path = DEFAULT_MODEL_PATH
        if not path.is_file() or not DEFAULT_MODEL_SHA256:
            raise ModelError(
                "no default model is installed in this refdiff package",
                hint="pass --model PATH to a model trained with `refdiff train`",
            )
        expected_sha256 = expected_sha256 or DEFAULT_MODEL_SHA256
    card = read_card(path)
    sha256 = file_sha256(path)
    if expected_sha256 and sha256 != expected_sha256.lower():
        raise ModelError(
            f"model file {path} has sha256 {sha256}, expected {expected_sha256.lower()}",
            hint="the file was modified or is not the model you pinned",
        )
    if scale is not None and card.scale != scale:
        raise ModelError(f"model {path} is x{card.scale}; x{scale} was requested")
    if bands is not None and len(card.bands) != bands:
        raise ModelError(f"model {path} takes {len(card.bands)} bands; the input has {bands}")
    if sha256 == DEFAULT_MODEL_SHA256:
        tile, overlap, margin = DEFAULT_MODEL_TILING
        card = dataclasses.replace(card, tile_px=tile, overlap_px=overlap, margin_px=margin)
    try:
        config = NetworkConfig.from_dict(card.network)
    except ValueError as exc:
        raise ModelError(f"model card of {path} has an invalid network: {exc}") from exc
    net = RefDiffUNet(config)
    _load_tensors_strict(net, path)
    denoiser = EDMPrecond(net, sigma_data=card.sigma_data)
    denoiser.eval()
    return LoadedModel(denoiser=denoiser, card=card, sha256=sha256, path=path)


def _check_is_safetensors(path: Path) -> None:
    """Refuse anything that is not plausibly a safetensors file, before parsing it."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    with path.open("rb") as stream:
        head = stream.read(9)
    size = path.stat().st_size
    if len(head) < 9:
        raise ModelError(f"model file {path} is empty or truncated")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 0 < header_len <= min(size - 8, _MAX_HEADER_BYTES):
        return  # a safetensors header: 8-byte length, then JSON (its first byte may be 0x80)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise ModelError(
            f"model file {path} is a pickle (torch.save) file; refdiff refuses pickles because "
            "loading one can run arbitrary code",
            hint="use a .safetensors model written by `refdiff train`",
        )
    raise ModelError(f"model file {path} is not a safetensors file (bad header)")


def _load_tensors_strict(net: torch.nn.Module, path: Path) -> None:
    """Copy tensors into ``net`` after checking keys, shapes, dtypes and finiteness exactly."""
    expected = net.state_dict()
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            missing = sorted(set(expected) - keys)
            unexpected = sorted(keys - set(expected))
            if missing or unexpected:
                raise ModelError(
                    f"model file {path} does not match its card's network: "
                    f"{len(missing)} missing tensor(s) {missing[:3]}, "
                    f"{len(unexpected)} unexpected {unexpected[:3]}"
                )
            tensors = {key: handle.get_tensor(key) for key in sorted(keys)}
    except SafetensorError as exc:
        raise ModelError(f"model file {path} is corrupt: {exc}") from exc
    for key, tensor in tensors.items():
        want = expected[key]
        if tensor.shape != want.shape:
            raise ModelError(
                f"model file {path}: tensor {key} has shape {tuple(tensor.shape)}, "
                f"the network needs {tuple(want.shape)}"
            )
        if tensor.dtype != want.dtype:
            raise ModelError(
                f"model file {path}: tensor {key} is {tensor.dtype}, "
                f"the network needs {want.dtype}",
                hint="refdiff does not cast weights silently; re-save the model in float32",
            )
    _check_finite(tensors, path)
    net.load_state_dict(tensors, strict=True)


def _check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"model file {path}: tensor {key} contains NaN or inf values")
