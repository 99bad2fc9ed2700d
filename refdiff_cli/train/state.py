"""Training state that must survive a restart: checkpoints, EMA, seeds, resume checks, signals.

A checkpoint is one safetensors file (model, EMA and Adam tensors) whose metadata holds JSON
for the step, the config, Adam's param_groups and a sha256 over every tensor's bytes, so a
flipped byte anywhere is caught on load. Nothing here pickles; nothing here calls torch.load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from refdiff_cli.errors import ConfigError, ModelError, OutputError
from refdiff_cli.files import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "refdiff-train-checkpoint"
CHECKPOINT_VERSION = 1
META_KEY = "refdiff.train"
DIGEST_KEY = "refdiff.tensors_sha256"
CHECKPOINT_RE = re.compile(r"^step-(\d{7})\.safetensors$")
#: Config fields that may change between a run and its resume: they cannot change the weights.
RESUMABLE_FIELDS = frozenset({"steps", "log_every", "checkpoint_every", "keep_checkpoints"})
#: Settings of older refdiff versions that no longer exist and never changed the weights (the
#: validation sampler's steps: validation now uses the exported card's sampler); a checkpoint
#: that records them still resumes.
RETIRED_FIELDS = frozenset({"val_sampler_steps"})


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. ("item", seed, step, i))."""
    text = json.dumps(list(parts), separators=(",", ":")).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator_for(*parts: int | str) -> torch.Generator:
    """A fresh CPU generator seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def checkpoint_path(folder: Path, step: int) -> Path:
    """``folder/step-<step:07d>.safetensors``."""
    return folder / f"step-{step:07d}.safetensors"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Published checkpoints of a run as (step, path), oldest first."""
    if not folder.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := CHECKPOINT_RE.match(path.name)) and path.is_file()
    ]
    return sorted(found)


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors holding NaN or inf."""
    return [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def save_checkpoint(path: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write a checkpoint atomically: hidden temp file in the same folder, fsync, rename.

    Raises:
        ValueError: a tensor is not finite (such a checkpoint is never written).
        OutputError: the file cannot be written (disk full, permissions); nothing is left.
    """
    bad = non_finite(tensors)
    if bad:
        raise ValueError(f"refusing to write a checkpoint with non-finite tensors: {bad[:3]}")
    cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    metadata = {
        META_KEY: json.dumps({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta}),
        DIGEST_KEY: tensors_digest(cpu),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as temp:
            save_file(cpu, str(temp), metadata=metadata)
    except OSError as exc:
        raise OutputError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}",
            hint="free disk space; the previous checkpoints are untouched",
        ) from exc


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; return its tensors and its metadata dict.

    Raises:
        ModelError: unreadable, not a refdiff training checkpoint, or the tensor digest does
            not match (a modified or corrupt file).
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            # Copies: get_tensor maps the file, and a resumed state must not alias a file.
            tensors = {key: handle.get_tensor(key).clone() for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"checkpoint {path} is unreadable: {exc}") from exc
    try:
        meta = json.loads(metadata[META_KEY])
        expected = metadata[DIGEST_KEY]
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"checkpoint {path} has no refdiff training metadata") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != CHECKPOINT_VERSION:
        raise ModelError(f"checkpoint {path} is not a version {CHECKPOINT_VERSION} checkpoint")
    if tensors_digest(tensors) != expected:
        raise ModelError(f"checkpoint {path} is corrupt: its tensors do not match their sha256")
    bad = non_finite(tensors)
    if bad:
        raise ModelError(f"checkpoint {path} holds non-finite tensors: {bad[:3]}")
    return tensors, meta


def newest_valid_checkpoint(
    folder: Path,
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any], list[str]] | None:
    """Load the newest checkpoint that verifies; corrupt newer ones are renamed ``*.corrupt``.

    Returns:
        (path, tensors, meta, warnings) or None when no checkpoint verifies.
    """
    warnings: list[str] = []
    for step, path in reversed(list_checkpoints(folder)):
        try:
            tensors, meta = load_checkpoint(path)
        except ModelError as exc:
            aside = path.with_name(path.name + ".corrupt")
            path.replace(aside)
            warnings.append(f"{exc.message}; moved it to {aside.name} and fell back")
            logger.warning("%s; moved it to %s, trying the previous one", exc.message, aside)
            continue
        if int(meta.get("step", -1)) != step:
            warnings.append(f"checkpoint {path} says step {meta.get('step')}; skipped")
            continue
        return path, tensors, meta, warnings
    return None


def rotate_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints, after verifying the newest; return them.

    A newest checkpoint that does not verify deletes nothing (and raises ``ModelError``).
    """
    found = list_checkpoints(folder)
    if not found:
        return []
    load_checkpoint(found[-1][1])
    removed = [path for _, path in found[:-keep]]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def clean_partials(folder: Path) -> None:
    """Remove temp files that a killed save left behind (they are never loaded)."""
    if folder.is_dir():
        for path in folder.glob(".step-*.partial"):
            path.unlink(missing_ok=True)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Fields (other than ``RESUMABLE_FIELDS``) whose values differ, as "name: old -> new"."""
    names = sorted((set(saved) | set(current)) - RESUMABLE_FIELDS - RETIRED_FIELDS)
    return [
        f"{name}: {saved.get(name)!r} -> {current.get(name)!r}"
        for name in names
        if saved.get(name) != current.get(name)
    ]


def check_resume(
    meta: Mapping[str, Any], config: Mapping[str, Any], fingerprint: str, *, path: Path
) -> list[str]:
    """Refuse a resume whose config changed (but steps); return warnings (changed chips).

    Raises:
        ConfigError: a field other than ``RESUMABLE_FIELDS`` differs, or ``steps`` is below
            the checkpoint's step.
    """
    run_dir = path.parent.parent
    changed = config_differences(meta["config"], config)
    if changed:
        raise ConfigError(
            f"{run_dir} was trained with another config ({'; '.join(changed)})",
            hint="only steps (and log/checkpoint intervals) may change on resume; use a new "
            f"-o folder or the settings in {run_dir / 'config.json'}",
        )
    if int(meta["step"]) > int(config["steps"]):
        raise ConfigError(
            f"--steps {config['steps']} is below the step {meta['step']} of {path}",
            hint="raise --steps to train longer",
        )
    if meta["chips_fingerprint"] != fingerprint:
        message = f"the chips differ from those {path.name} was trained on (manifest changed)"
        logger.warning(message)
        return [message]
    return []


def truncate_stats(path: Path, step: int) -> None:
    """Drop ``stats.jsonl`` lines of steps after ``step`` (a resume is about to redo them)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Adam and EMA state <-> tensors.


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    """Adam's per-parameter state as ``optim.<i>.<name>`` tensors, and its param_groups."""
    state_dict = optimizer.state_dict()
    tensors = {
        f"optim.{index}.{name}": value
        for index, state in state_dict["state"].items()
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    return tensors, state_dict["param_groups"]


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups: Any
) -> None:
    """Restore what ``optimizer_tensors`` saved (exact: tensors are copied bit for bit)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    restored = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in groups]
    optimizer.load_state_dict({"state": state, "param_groups": restored})


def pack_state(
    net: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], Any]:
    """All tensors of a checkpoint (``model.*``, ``ema.*``, ``optim.*``) and Adam's groups."""
    adam, groups = optimizer_tensors(optimizer)
    tensors = {
        **{f"model.{k}": v for k, v in net.state_dict().items()},
        **{f"ema.{k}": v for k, v in ema.state_dict().items()},
        **adam,
    }
    return tensors, groups


def unpack_state(
    tensors: Mapping[str, torch.Tensor],
    groups: Any,
    net: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Load what ``pack_state`` saved into the network, its EMA and the optimizer."""
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    net.load_state_dict(model, strict=True)
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k[:4] == "ema."}, strict=True)
    load_optimizer(optimizer, tensors, groups)


def ema_beta(
    *, batch_size: int, images_seen: int, halflife_kimg: float, rampup_ratio: float | None
) -> float:
    """EMA decay per step: 0.5 ** (batch / halflife_images) (Karras et al. 2022, App. F.1).

    ``halflife_images = min(halflife_kimg * 1000, images_seen * rampup_ratio)`` with the ramp.
    """
    halflife = halflife_kimg * 1000.0
    if rampup_ratio is not None:
        halflife = min(halflife, images_seen * rampup_ratio)
    return float(0.5 ** (batch_size / max(halflife, 1e-8)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """``ema <- beta * ema + (1 - beta) * net`` for every parameter; buffers are copied."""
    for p_ema, p_net in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.lerp_(p_net.detach(), 1.0 - beta)
    for b_ema, b_net in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b_net)


# ---------------------------------------------------------------------------------------------
# Signals: an interrupt must never land between the optimizer step and the EMA update.


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the old handlers.

    Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, FrameType | None]] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append((signum, frame))

    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum, frame in pending[:1]:
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL and signum == signal.SIGINT:
                raise KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
