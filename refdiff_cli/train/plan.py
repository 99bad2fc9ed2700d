"""The contracts of a training run: its validated plan, data order, LR schedule and report."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from refdiff_cli.config import to_dict
from refdiff_cli.datasets.chips import ChipDataset
from refdiff_cli.errors import ConfigError, InputError, ModelError
from refdiff_cli.files import file_sha256
from refdiff_cli.model.checkpoint import DEFAULT_MODEL_PATH, read_card
from refdiff_cli.model.device import resolve_device
from refdiff_cli.model.network_config import PRESETS, NetworkConfig
from refdiff_cli.model.precond import MASK_CHANNELS
from refdiff_cli.train import state as ts
from refdiff_cli.train.options import TrainConfig
from refdiff_cli.train.references import synthesis_config


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TrainReport:
    """What a training run did; the CLI prints it (``--json``: as JSON)."""

    run_dir: Path
    model: Path
    checkpoint: Path | None
    resumed_from: Path | None
    start_step: int
    step: int
    images_seen: int
    skipped_steps: int
    loss: float | None
    validation: dict[str, Any] | None
    seconds: float
    world_size: int
    rank: int = 0  # only rank 0's report is printed
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        return to_dict(self)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TrainPlan:
    """The validated set-up of a run: network, device, data (``resolve`` makes it)."""

    config: TrainConfig
    network: NetworkConfig
    device: torch.device
    dtype: torch.dtype
    train: ChipDataset
    val: ChipDataset | None
    rank: int
    world_size: int
    local_rank: int
    init_sha256: str | None = None  # of the model file ``config.init_from``

    def describe(self, run_dir: Path) -> dict[str, Any]:
        """The resolved settings as JSON (what ``--dry-run`` prints)."""
        found = ts.list_checkpoints(run_dir / "checkpoints")
        return {
            "config": to_dict(self.config),
            "network": self.network.to_dict(),
            "device": str(self.device),
            "world_size": self.world_size,
            "chips": {
                "path": str(self.train.root),
                "fingerprint": self.train.fingerprint,
                "train": len(self.train),
                "val": len(self.val) if self.val else 0,
                "chip_px": self.train.chip_px,
                "bands": list(self.train.bands),
                "lr_scale": self.train.lr_scale,
            },
            "run_dir": str(run_dir),
            "resume_from_step": found[-1][0] if found else None,
            "init_sha256": self.init_sha256,
        }


def resolve(config: TrainConfig, chips: Path) -> TrainPlan:
    """Check the config against the chips and the machine; build nothing heavy.

    Raises:
        ConfigError: unknown preset, bad network overrides, crop/scale/batch mismatches,
            bf16 without CUDA, unavailable device (exit 2).
        InputError: missing or invalid chips (exit 3).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if config.preset not in PRESETS:
        raise ConfigError(f"unknown --preset {config.preset!r}; use {', '.join(PRESETS)}")
    train = ChipDataset(chips, "train")
    if len(train) == 0:
        raise InputError(f"{chips} has no training chips", hint="prepare some with a train split")
    val_set = ChipDataset(chips, "val")
    channels = {
        "image_channels": len(train.bands),
        "mask_channels": MASK_CHANNELS[config.reference],
    }
    fields = {**PRESETS[config.preset].to_dict(), **channels, **config.network}
    network = NetworkConfig.from_dict(fields)
    if (network.image_channels, network.mask_channels) != tuple(channels.values()):
        raise ConfigError(
            f"network overrides ask for {network.image_channels} image / {network.mask_channels} "
            f"mask channels; the chips have {len(train.bands)} bands and reference "
            f"{config.reference!r} needs {channels['mask_channels']} mask channel(s)"
        )
    multiple = math.lcm(config.scale, network.size_multiple)
    if config.crop_px % multiple or config.crop_px > train.chip_px:
        raise ConfigError(
            f"--crop {config.crop_px} must be a multiple of {multiple} (scale x{config.scale}, "
            f"network size multiple {network.size_multiple}) and <= the chips' {train.chip_px} px"
        )
    if config.lr_method == "stored" and train.lr_scale is None:
        raise ConfigError(
            f"lr_method 'stored' needs chips with LR images; {chips} has none",
            hint="use lr_method realistic or bicubic",
        )
    if train.lr_scale is not None and train.lr_scale != config.scale:
        raise ConfigError(
            f"--scale {config.scale} differs from the x{train.lr_scale} LR stored in {chips}",
            hint=f"use --scale {train.lr_scale}, or prepare chips for x{config.scale}",
        )
    synthesis_config(config)
    init_sha256 = check_init_model(config, network, bands=len(train.bands))
    if config.batch_size % world:
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by the {world} processes",
            hint="the batch is global: use a multiple of the process count",
        )
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
    if config.precision == "bf16" and device.type != "cuda":
        raise ConfigError("--precision bf16 trains on CUDA only; use fp32 on this device")
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    return TrainPlan(
        config=config,
        network=network,
        device=device,
        dtype=dtype,
        train=train,
        val=val_set if len(val_set) and config.val_chips else None,
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        init_sha256=init_sha256,
    )


def init_model_path(config: TrainConfig) -> Path | None:
    """The model file ``init_from`` names: "default" is the bundled model; None without one."""
    if config.init_from is None:
        return None
    return DEFAULT_MODEL_PATH if config.init_from == "default" else Path(config.init_from)


def check_init_model(config: TrainConfig, network: NetworkConfig, *, bands: int) -> str | None:
    """The sha256 of ``config.init_from`` once its card fits the run, or None without one.

    Raises:
        ModelError: the file is missing, not a model or has an invalid card (exit 3).
        ConfigError: its network, scale, bands, reference mode, target or sigma_data differ
            (exit 2).
    """
    path = init_model_path(config)
    if path is None:
        return None
    card = read_card(path)
    try:
        theirs = NetworkConfig.from_dict(card.network)
    except ValueError as exc:
        raise ModelError(f"model card of {path} has an invalid network: {exc}") from exc
    ours_fields = network.to_dict()
    pairs = {
        f"network {key}": (value, ours_fields[key])
        for key, value in theirs.to_dict().items()
        if value != ours_fields[key]
    }
    pairs |= {
        "scale": (card.scale, config.scale),
        "bands": (len(card.bands), bands),
        "reference": (card.reference, config.reference),
        "target": (card.target, config.target),
        "sigma_data": (card.sigma_data, config.target_sigma_data),
    }
    differences = [f"{k} {a!r} (the run: {b!r})" for k, (a, b) in pairs.items() if a != b]
    if differences:
        raise ConfigError(
            f"init_from {path} cannot start this run: its {'; '.join(differences)}",
            hint="train with the preset, network overrides, scale, reference and target of "
            "that model, or drop init_from",
        )
    return file_sha256(path)


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then constant."""
    if config.warmup_steps <= 0:
        return config.lr
    return config.lr * min(1.0, (step + 1) / config.warmup_steps)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=ts.generator_for("epoch", seed, epoch)).tolist())


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> list[int]:
    """Chip indices of the global batch of ``step``: a fresh permutation of the n chips per epoch.

    Position p = step * batch_size + j falls in epoch p // n; each epoch's order is drawn
    from (seed, epoch), so the order is a pure function of (seed, step).
    """
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [_epoch_order(seed, p // n, n)[p % n] for p in positions]


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
