"""Model files: exact round trips, and clear refusals of tampered, mismatched or unsafe files."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from refdiff_cli.errors import ModelError
from refdiff_cli.files import file_sha256
from refdiff_cli.model import checkpoint
from refdiff_cli.model.card import CARD_METADATA_KEY
from refdiff_cli.model.checkpoint import load_model, read_card, save_model
from refdiff_cli.model.network import RefDiffUNet
from refdiff_cli.model.network_config import PRESETS
from tests.conftest import tiny_card, write_tiny_model


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "tiny.safetensors", seed=3)


def tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())  # noqa: SIM118


def test_round_trip_is_exact(model_file: Path) -> None:
    original = RefDiffUNet(PRESETS["tiny"], seed=3).state_dict()
    loaded = load_model(model_file)
    assert loaded.card == tiny_card()
    assert loaded.sha256 == file_sha256(model_file)
    for key, tensor in loaded.denoiser.net.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    assert not loaded.denoiser.training


def test_save_is_atomic_and_refuses_non_finite_weights(tmp_path: Path) -> None:
    net = RefDiffUNet(PRESETS["tiny"])
    with torch.no_grad():
        net.stem.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ModelError, match="NaN or inf"):
        save_model(path, net, tiny_card())
    assert not path.exists()
    assert not list(tmp_path.iterdir())


def test_saved_models_get_the_umask_permissions_not_owner_only(tmp_path: Path) -> None:
    """safetensors creates 0600 files: a model trained for a team would be unreadable to it."""
    previous = os.umask(0o022)
    try:
        path = write_tiny_model(tmp_path / "m.safetensors")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: {**c, "scale": "eight"}, "invalid"),
        (lambda c: {k: v for k, v in c.items() if k != "bands"}, r"lacks field\(s\): bands"),
        (lambda c: {**c, "colour": "blue"}, r"unknown field\(s\): colour"),
        (lambda c: {**c, "format_version": 99}, "format_version"),
        (lambda c: {**c, "overlap_px": 4}, "overlap_px"),
    ],
)
def test_tampered_cards_are_refused_naming_the_field(
    model_file: Path, tmp_path: Path, edit: object, needle: str
) -> None:
    tensors, metadata = tensors_and_metadata(model_file)
    card = json.loads(metadata[CARD_METADATA_KEY])
    metadata[CARD_METADATA_KEY] = json.dumps(edit(card))  # type: ignore[operator]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(ModelError, match=needle):
        load_model(bad)


def test_card_must_match_the_request(model_file: Path) -> None:
    with pytest.raises(ModelError, match="x8; x16 was requested"):
        load_model(model_file, scale=16)
    with pytest.raises(ModelError, match="takes 3 bands"):
        load_model(model_file, bands=4)


def test_flipped_data_byte_fails_the_pinned_sha256(model_file: Path) -> None:
    pinned = file_sha256(model_file)
    data = bytearray(model_file.read_bytes())
    data[-100] ^= 0x01  # inside the tensor data: safetensors alone loads this silently
    model_file.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(model_file, expected_sha256=pinned)


@pytest.mark.parametrize("problem", ["shape", "float64", "nan", "missing", "extra"])
def test_tensors_are_checked_exactly(model_file: Path, tmp_path: Path, problem: str) -> None:
    tensors, metadata = tensors_and_metadata(model_file)
    key = "stem.weight"
    if problem == "shape":
        tensors[key] = tensors[key][:, :, :2, :2].contiguous()
        needle = "has shape"
    elif problem == "float64":
        tensors[key] = tensors[key].double()
        needle = "no silent|does not cast"
    elif problem == "nan":
        tensors[key] = tensors[key].clone()
        tensors[key][0, 0, 0, 0] = float("nan")
        needle = "NaN or inf"
    elif problem == "missing":
        del tensors[key]
        needle = "missing"
    else:
        tensors["extra.weight"] = torch.zeros(2)
        needle = "unexpected"
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(ModelError) as info:
        load_model(bad)
    assert any(word in str(info.value) for word in needle.split("|")), str(info.value)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_renamed_safetensors_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Payload(str(marker))))
    code = (
        "from pathlib import Path; from refdiff_cli.model.checkpoint import load_model\n"
        f"load_model(Path({str(evil)!r}))"
    )
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "refuses pickles" in result.stderr or "not a safetensors" in result.stderr
    assert not marker.exists()
    zipped = tmp_path / "torch.safetensors"
    torch.save({"w": torch.zeros(1)}, zipped)  # the zip format of torch.save
    with pytest.raises(ModelError, match="pickle"):
        read_card(zipped)


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"x" * 20])
def test_empty_truncated_and_garbage_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        load_model(path)


def test_without_a_default_model_a_clear_error_names_the_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_SHA256", "")
    with pytest.raises(ModelError, match="--model"):
        load_model(None)


def test_the_default_model_is_pinned(monkeypatch: pytest.MonkeyPatch, model_file: Path) -> None:
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_PATH", model_file)
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="sha256"):
        load_model(None)
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_SHA256", file_sha256(model_file))
    assert load_model(None).path == model_file


def test_a_guided_card_must_carry_valid_guided_settings() -> None:
    network = {**PRESETS["tiny"].to_dict(), "mask_channels": 2}
    card = tiny_card(reference="guided", network=network, guided={"trust_low": 0.3})
    assert card.guided_config is not None and card.guided_config.trust_low == 0.3
    with pytest.raises(ModelError, match="'guided' is invalid"):
        tiny_card(reference="guided", network=network, guided={"trust_lo": 0.3})
    with pytest.raises(ModelError, match="'guided' is invalid"):
        tiny_card(reference="guided", network=network, guided={"trust_low": 0.9})
    assert tiny_card().guided_config is None
