"""``refdiff train``: exact resume, torchrun, NaN guard, rotation, config checks, exported model."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from refdiff_cli.config import SamplerConfig, from_dict, save_json, to_dict
from refdiff_cli.data.resample import downscale_bicubic
from refdiff_cli.datasets.chips import ChipDataset, ShardWriter
from refdiff_cli.errors import ConfigError, TrainingDiverged
from refdiff_cli.files import file_sha256
from refdiff_cli.model.checkpoint import load_model
from refdiff_cli.reference.guided import GuidedConfig, guided_transfer
from refdiff_cli.train import run as train_tool
from refdiff_cli.train import state as train_state
from refdiff_cli.train.options import TrainConfig
from refdiff_cli.train.plan import batch_indices, lr_at, resolve
from refdiff_cli.train.run import train
from refdiff_cli.train.state import deferred_signals, ema_beta, load_checkpoint, save_checkpoint
from refdiff_cli.upscale.engines import DiffusionEngine, EngineBatch
from tests.conftest import REPO_ROOT, run_cli

CHIP_PX, BANDS = 64, ("red", "green", "blue")
CliRunner = Callable[..., tuple[int, str, str]]


def write_chips(root: Path, *, n_train: int = 8, n_val: int = 2) -> Path:
    """Smooth random chips with a changed square, a reference gap and an HR nodata corner."""
    rng = np.random.default_rng(7)
    writer = ShardWriter(root, chip_px=CHIP_PX, bands=BANDS, shard_size=5)
    for i in range(n_train + n_val):
        coarse = rng.standard_normal((3, 8, 8))
        hr = np.tanh(np.kron(coarse, np.ones((8, 8)))).astype(np.float32)  # (3, 64, 64)
        ref = np.clip(hr + 0.1 * rng.standard_normal(hr.shape), -1, 1).astype(np.float32)
        mask = np.zeros((1, CHIP_PX, CHIP_PX), np.float32)
        mask[:, 8:24, 8:24] = 1.0
        hr_valid = np.ones((1, CHIP_PX, CHIP_PX), bool)
        hr_valid[:, :6, :6] = False
        ref_valid = np.ones((1, CHIP_PX, CHIP_PX), bool)
        ref_valid[:, 40:, :20] = False
        split = "train" if i < n_train else "val"
        writer.add(
            split,
            source=0,
            origin=(0, CHIP_PX * i),
            hr=np.where(hr_valid, hr, 0),
            ref=np.where(ref_valid, ref, 0),
            mask=mask,
            hr_valid=hr_valid,
            ref_valid=ref_valid,
        )
    writer.finish(
        sources=[{"name": "synthetic", "license": "CC0-1.0", "sha256": "0" * 64}],
        normalization={"mode": "percentile", "p_low": 0.5, "p_high": 99.5},
        mask_encoding={"kind": "binary"},
        options={"test": True},
    )
    return root


def tiny(**changes: Any) -> TrainConfig:
    """A run of a few tiny-preset steps on 32 px crops, deterministic, on the CPU."""
    base = TrainConfig(
        preset="tiny",
        crop_px=32,
        batch_size=4,
        steps=6,
        warmup_steps=2,
        checkpoint_every=100,
        log_every=1,
        val_every=0,
        val_chips=0,  # validation is tested on its own
        ema_halflife_kimg=0.02,  # 20 images: an EMA that differs visibly from the weights
        ema_rampup_ratio=None,
        device="cpu",
        deterministic=True,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread (and do not fight other jobs for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: Subprocesses use one thread too: the same reduction order as this process.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chips(tmp_path_factory.mktemp("chips") / "chips")


def config_file(path: Path, config: TrainConfig) -> Path:
    save_json(config, path)
    return path


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, copied (load_file may map the file)."""
    return {k: v.clone() for k, v in load_file(str(path)).items()}


def checkpoints(run: Path) -> list[str]:
    """Names of everything in the run's checkpoints folder, sorted."""
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Iterator[CliRunner]:
    """Run ``refdiff ARGS`` in this process: (exit code, stdout, stderr)."""
    from refdiff_cli.cli import run

    package_logger = logging.getLogger("refdiff_cli")
    saved = (package_logger.handlers[:], package_logger.propagate, package_logger.level)
    previous_sigterm = signal.getsignal(signal.SIGTERM)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    yield invoke
    package_logger.handlers[:], package_logger.propagate, package_logger.level = saved
    signal.signal(signal.SIGTERM, previous_sigterm)


@dataclasses.dataclass
class Faults:
    """What the ``faults`` fixture breaks in the training runs of this process (steps 0-based)."""

    nan_loss: set[int] = dataclasses.field(default_factory=set)  # the network returns NaN
    inf_grad: set[int] = dataclasses.field(default_factory=set)  # first gradient inf after backward
    interrupt: set[int] = dataclasses.field(default_factory=set)  # Ctrl-C before the step
    resume_without: set[str] = dataclasses.field(default_factory=set)  # "optimizer", "ema"


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    """Inject ``Faults`` by wrapping the trainer's step methods and the checkpoint loader."""
    injected = Faults()
    trainer = train_tool._Trainer
    train_step, denoise, clip = trainer._train_step, trainer._denoise, trainer._clip_gradients
    unpack_state, load_optimizer = train_state.unpack_state, train_state.load_optimizer

    def interruptible_step(self: Any) -> None:
        if self.step in injected.interrupt:
            raise KeyboardInterrupt
        train_step(self)

    def diverging_denoise(self: Any, *args: Any) -> torch.Tensor:
        out = denoise(self, *args)
        return out * math.nan if self.step in injected.nan_loss else out

    def inf_gradients(self: Any) -> bool:
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if self.step in injected.inf_grad and grads:
            grads[0].fill_(math.inf)
        return clip(self)

    def unpack_without(tensors: Any, groups: Any, net: Any, ema: Any, optimizer: Any) -> None:
        unpack_state(tensors, groups, net, ema, optimizer)
        if "ema" in injected.resume_without:
            ema.load_state_dict(net.state_dict())  # the EMA restarts at the weights

    def load_optimizer_unless_skipped(*args: Any) -> None:
        if "optimizer" not in injected.resume_without:
            load_optimizer(*args)

    monkeypatch.setattr(trainer, "_train_step", interruptible_step)
    monkeypatch.setattr(trainer, "_denoise", diverging_denoise)
    monkeypatch.setattr(trainer, "_clip_gradients", inf_gradients)
    monkeypatch.setattr(train_state, "unpack_state", unpack_without)
    monkeypatch.setattr(train_state, "load_optimizer", load_optimizer_unless_skipped)
    return injected


def test_exact_resume_after_ctrl_c_in_a_new_process(
    chips: Path, tmp_path: Path, faults: Faults
) -> None:
    """T1 + T2 + T9: 6 steps straight == Ctrl-C at step 3 + re-run in a new process, bitwise."""
    config = tiny(steps=6)
    straight = train(config, chips, tmp_path / "a")
    expected = tensors(straight.checkpoint or Path())
    assert straight.step == 6 and checkpoints(tmp_path / "a") == ["step-0000006.safetensors"]

    run_b = tmp_path / "b"
    faults.interrupt = {3}
    with pytest.raises(KeyboardInterrupt):
        train(config, chips, run_b)
    faults.interrupt = set()
    assert checkpoints(run_b) == ["step-0000003.safetensors"], "saved at the step boundary"
    for name in ("c", "d"):
        shutil.copytree(run_b, tmp_path / name)

    cfg = config_file(tmp_path / "config.json", config)
    result = run_cli(["train", chips, "-o", run_b, "--config", cfg, "--json"], env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["start_step"], report["step"]) == (3, 6)
    resumed = tensors(run_b / "checkpoints" / "step-0000006.safetensors")
    assert resumed.keys() == expected.keys()
    assert len(expected) > 300  # model, EMA, Adam exp_avg / exp_avg_sq / step
    different = [k for k in expected if not torch.equal(expected[k], resumed[k])]
    assert different == [], f"resume is not bitwise exact: {different[:5]}"

    # Mutation checks: resuming without the optimizer state or the EMA must break equality.
    for name, part, prefix in (("c", "optimizer", "mode"), ("d", "ema", "ema.")):
        faults.resume_without = {part}
        mutated = train(config, chips, tmp_path / name)
        got = tensors(mutated.checkpoint or Path())
        deltas = [float((got[k] - expected[k]).abs().max()) for k in expected if k[:4] == prefix]
        assert max(deltas) > 1e-5, f"resuming without the {part} went unnoticed"


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_130(chips: Path, tmp_path: Path) -> None:
    """A real Ctrl-C (SIGINT to the process): checkpoint at the step boundary, exit 130."""
    run = tmp_path / "run"
    cfg = config_file(tmp_path / "config.json", tiny(steps=10_000))
    env = {**os.environ, "NO_COLOR": "1", **ONE_THREAD}
    command = [sys.executable, "-m", "refdiff_cli", "train", str(chips), "-o", str(run)]
    proc = subprocess.Popen(
        [*command, "--config", str(cfg)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    stats = run / "stats.jsonl"
    while time.monotonic() < deadline and not (stats.exists() and stats.read_text().count("\n")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    (saved,) = (run / "checkpoints").glob("step-*.safetensors")
    step = int(saved.stem.split("-")[1])
    assert step >= 1
    result = run_cli(
        ["train", chips, "-o", run, "--config", cfg, "--steps", str(step + 1)], env=ONE_THREAD
    )
    assert result.returncode == 0, result.stderr


def test_torchrun_two_processes_match_one(chips: Path, tmp_path: Path) -> None:
    """2 gloo processes with batch 4 = 1 process with batch 4 (dropout off: it is per rank)."""
    config = tiny(steps=3, network={"dropout": 0.0})
    cfg = config_file(tmp_path / "config.json", config)
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "refdiff_cli", "train", str(chips)]
    command += ["-o", str(run), "--config", str(cfg), "--json"]
    env = {**os.environ, "NO_COLOR": "1", **ONE_THREAD}
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=240, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # one JSON document: rank 1 prints nothing
    assert (report["world_size"], report["step"]) == (2, 3)
    single = train(config, chips, tmp_path / "single")
    one, two = (
        tensors(single.checkpoint or Path()),
        tensors(run / "checkpoints" / "step-0000003.safetensors"),
    )
    assert one.keys() == two.keys()
    worst = max(float((one[k].double() - two[k].double()).abs().max()) for k in one)
    assert worst < 1e-5, f"2-process weights differ from 1-process ones by {worst}"


def test_batch_must_divide_over_processes(chips: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        resolve(tiny(batch_size=4), chips)


def test_nan_guard_skips_steps_then_gives_up(
    chips: Path,
    tmp_path: Path,
    cli: CliRunner,
    faults: Faults,
) -> None:
    """T4 + T5: a NaN loss or an inf gradient skips the step; max_bad_steps in a row: exit 1."""
    run = tmp_path / "run"
    config = tiny(steps=5, checkpoint_every=1, keep_checkpoints=10, max_bad_steps=3)
    faults.nan_loss, faults.inf_grad = {1}, {3}
    report = train(config, chips, run)
    assert (report.step, report.skipped_steps) == (5, 2)
    saved = {k: tensors(run / "checkpoints" / f"step-{k:07d}.safetensors") for k in range(1, 6)}
    weights = [k for k in saved[1] if k.startswith("model.")]
    assert all(torch.equal(saved[1][k], saved[2][k]) for k in weights), "step 1 was skipped"
    assert all(torch.equal(saved[3][k], saved[4][k]) for k in weights), "step 3 was skipped"
    assert not all(torch.equal(saved[2][k], saved[3][k]) for k in weights), "step 2 trained"
    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    stats = [s for s in lines if s["kind"] == "train"]
    assert [s["skipped_steps"] for s in stats] == [0, 1, 1, 2, 2]
    assert stats[1]["loss"] is None

    faults.nan_loss, faults.inf_grad = {5, 6, 7}, set()
    cfg = config_file(tmp_path / "config.json", config)
    code, _, err = cli("train", chips, "-o", run, "--config", cfg, "--steps", "9")
    assert code == 1, err
    last_good = run / "checkpoints" / "step-0000007.safetensors"
    assert f"loss not finite since step 5; last good checkpoint {last_good}" in err
    assert checkpoints(run)[-1] == last_good.name
    for path in (run / "checkpoints").glob("*.safetensors"):
        assert all(
            bool(torch.isfinite(t).all()) for t in tensors(path).values() if t.is_floating_point()
        )


def test_checkpoints_with_non_finite_tensors_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "step-0000001.safetensors"
    with pytest.raises(ValueError, match="non-finite"):
        save_checkpoint(path, {"model.w": torch.tensor([1.0, math.nan])}, {"step": 1})
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(path, {"model.w": torch.tensor([1.0, 2.0])}, {"step": 1})
    loaded, meta = load_checkpoint(path)
    assert torch.equal(loaded["model.w"], torch.tensor([1.0, 2.0])) and meta["step"] == 1


def test_diverged_before_any_checkpoint(chips: Path, tmp_path: Path, faults: Faults) -> None:
    faults.nan_loss = set(range(10))
    with pytest.raises(TrainingDiverged, match="since step 0; last good checkpoint none"):
        train(tiny(steps=10, max_bad_steps=2), chips, tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    assert not folder.exists() or not list(folder.iterdir())
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_rotation_keeps_three_and_a_corrupt_newest_falls_back(chips: Path, tmp_path: Path) -> None:
    """T6 + T8: keep_checkpoints=3 after 5 saves; a flipped byte in the newest -> previous one."""
    run = tmp_path / "run"
    config = tiny(steps=5, checkpoint_every=1, keep_checkpoints=3)
    train(config, chips, run)
    assert checkpoints(run) == [f"step-{k:07d}.safetensors" for k in (3, 4, 5)]
    newest = run / "checkpoints" / "step-0000005.safetensors"
    original = tensors(newest)
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0x10  # inside the tensor data: safetensors alone would load it silently
    newest.write_bytes(bytes(data))
    partial = run / "checkpoints" / ".step-0000009.safetensors.4242.partial"
    partial.write_bytes(b"killed during a save")  # T3: never loaded, cleaned up

    report = train(dataclasses.replace(config, steps=6), chips, run)
    assert not partial.exists()
    assert (
        report.start_step == 4
        and report.resumed_from == run / "checkpoints" / "step-0000004.safetensors"
    )
    assert any("corrupt" in w and "fell back" in w for w in report.warnings)
    assert (run / "checkpoints" / "step-0000005.safetensors.corrupt").exists()
    assert checkpoints(run) == [
        *(f"step-{k:07d}.safetensors" for k in (4, 5)),
        "step-0000005.safetensors.corrupt",
        "step-0000006.safetensors",
    ]
    redone = tensors(run / "checkpoints" / "step-0000005.safetensors")
    assert all(torch.equal(original[k], redone[k]) for k in original), "redone step 5 differs"


def test_config_change_on_resume_exits_2_and_dry_run_writes_nothing(
    chips: Path, tmp_path: Path, cli: CliRunner
) -> None:
    """T7: another lr (or preset) on resume is refused; --dry-run prints the resolved config."""
    run = tmp_path / "run"
    cfg = config_file(tmp_path / "config.json", tiny(steps=2))
    code, out, _ = cli("train", chips, "-o", run, "--config", cfg, "--lr", "3e-4", "--dry-run")
    assert code == 0
    printed = json.loads(out)
    assert printed["config"]["lr"] == 3e-4 and printed["config"]["preset"] == "tiny"
    assert printed["chips"]["train"] == 8 and printed["resume_from_step"] is None
    assert not run.exists(), "--dry-run must write nothing"

    code, _, err = cli("train", chips, "-o", run, "--config", cfg)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["steps"] == 2
    code, _, err = cli("train", chips, "-o", run, "--config", cfg, "--lr", "3e-4", "--steps", "4")
    assert code == 2
    assert "lr: 0.0001 -> 0.0003" in err
    code, _, err = cli("train", chips, "-o", run, "--config", cfg, "--preset", "small")
    assert code == 2 and "preset" in err
    code, _, err = cli("train", chips, "-o", run, "--config", cfg, "--steps", "1")
    assert code == 2 and "below the step 2" in err
    code, out, err = cli("train", chips, "-o", run, "--config", cfg, "--steps", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["start_step"] == 2
    code, _, err = cli("train", chips, "-o", run, "--config", cfg, "--precision", "bf16")
    assert code == 2 and "bf16" in err


def test_exported_model_loads_and_runs(chips: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = train(tiny(steps=2, val_chips=2), chips, run)
    loaded = load_model(run / "model.safetensors", scale=8, bands=3)
    card = loaded.card
    dataset = ChipDataset(chips, "train")
    assert card.preset == "tiny" and card.bands == BANDS and card.scale == 8
    assert card.normalization == dataset.manifest["normalization"]
    assert card.mask_encoding == {"kind": "binary"}
    assert (card.train_tile_px, card.tile_px, card.overlap_px, card.margin_px) == (32, 128, 64, 16)
    # One deterministic Euler step; without "mean" training it starts from noise.
    sampler = card.sampler_config
    assert (sampler.sampler, sampler.steps, sampler.S_churn, sampler.start) == (
        "euler",
        1,
        0.0,
        "noise",
    )
    assert card.reference == "raw" and card.guided == {}
    assert card.training["chips_fingerprint"] == dataset.fingerprint
    assert card.training["sources"] == [{"name": "synthetic", "license": "CC0-1.0"}]
    assert card.training["steps"] == 2 and card.training["images_seen"] == 8
    assert card.training["validation"]["chips"] == 2  # final validation on the val split
    ema = {k[4:]: v for k, v in tensors(report.checkpoint or Path()).items() if k[:4] == "ema."}
    state = loaded.denoiser.net.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in ema), "the model file holds the EMA weights"

    engine = DiffusionEngine(
        loaded, SamplerConfig(steps=2), device=torch.device("cpu"), precision="fp32"
    )
    batch = EngineBatch(
        lr=torch.zeros(1, 3, 4, 4),
        ref=torch.zeros(1, 3, 32, 32),
        ref_valid=torch.ones(1, 1, 32, 32, dtype=torch.bool),
        mask=torch.zeros(1, 1, 32, 32),
        origins=((0, 0),),
        seed=0,
    )
    out = engine(batch)
    assert out.shape == (1, 3, 32, 32) and bool(torch.isfinite(out).all())
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    val = [s for s in stats if s["kind"] == "val"]
    assert len(val) == 1 and set(val[0]["val_loss"]) == {"0.05", "0.2", "0.5", "1", "2", "5"}
    assert val[0]["psnr_lr_up"] > 5


def test_guided_reference_recipe_trains_exports_and_starts_at_the_guided_estimate(
    chips: Path, tmp_path: Path
) -> None:
    """The reference issue's recipe: guided conditions, synthesised and dropped references,
    "mean" items; the exported card runs the guided transfer it trained with, and a network
    that has learnt nothing (its zero-initialised head) returns the guided estimate."""
    run = tmp_path / "run"
    config = tiny(
        steps=2,
        val_chips=2,
        target="residual",
        reference="guided",
        synthesize_fraction=0.5,
        drop_reference_fraction=0.25,
        mean_fraction=0.5,
        guided={"trust_low": 0.3},
    )
    train(config, chips, run)
    loaded = load_model(run / "model.safetensors", scale=8, bands=3)
    card = loaded.card
    assert card.reference == "guided" and card.network["mask_channels"] == 2
    assert card.guided == to_dict(GuidedConfig(trust_low=0.3))
    assert card.sampler_config.start == "mean" and card.sampler_config.steps == 1
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert next(s for s in stats if s["kind"] == "val")["psnr_base"] > 5

    engine = DiffusionEngine(
        loaded, card.sampler_config, device=torch.device("cpu"), precision="fp32"
    )
    hr = torch.tanh(torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)))
    lr = downscale_bicubic(hr, 8)
    batch = EngineBatch(
        lr=lr,
        ref=hr,
        ref_valid=torch.ones(1, 1, 128, 128, dtype=torch.bool),
        mask=torch.zeros(1, 1, 128, 128),
        origins=((0, 0),),
        seed=0,
    )
    out = engine(batch)
    guided = guided_transfer(
        lr,
        hr,
        mask=batch.mask,
        ref_valid=batch.ref_valid,
        scale=8,
        config=GuidedConfig(trust_low=0.3),
    ).estimate
    assert float((out - guided).abs().max()) < 0.05  # 2 steps barely move a zero head
    assert torch.equal(out, engine(dataclasses.replace(batch, seed=1)))  # no seed noise


def test_stored_lr_trains_and_scale_must_match(tmp_path: Path) -> None:
    root = tmp_path / "chips"
    writer = ShardWriter(root, chip_px=CHIP_PX, bands=BANDS, lr_scale=8)
    rng = np.random.default_rng(3)
    for _ in range(3):
        hr = np.tanh(rng.standard_normal((3, CHIP_PX, CHIP_PX))).astype(np.float32)
        writer.add(
            "train",
            source=0,
            origin=(0, 0),
            hr=hr,
            ref=hr,
            mask=np.zeros((1, CHIP_PX, CHIP_PX), np.float32),
            hr_valid=np.ones((1, CHIP_PX, CHIP_PX), bool),
            ref_valid=np.ones((1, CHIP_PX, CHIP_PX), bool),
            lr=hr.reshape(3, 8, 8, 8, 8).mean(axis=(2, 4)),
        )
    writer.finish(sources=[{}], normalization={}, mask_encoding={"kind": "binary"}, options={})
    report = train(tiny(steps=2, lr_method="stored"), root, tmp_path / "run")
    assert report.step == 2 and report.validation is None  # no val split: no validation
    with pytest.raises(ConfigError, match="differs from the x8 LR"):
        resolve(tiny(scale=4, lr_method="bicubic"), root)
    with pytest.raises(ConfigError, match="needs chips with LR"):
        resolve(tiny(lr_method="stored"), write_chips(tmp_path / "plain", n_train=1, n_val=0))


def test_config_errors(chips: Path) -> None:
    with pytest.raises(ConfigError, match="fp16"):
        from_dict(TrainConfig, {"precision": "fp16"})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TrainConfig, {"step": 10})
    with pytest.raises(ConfigError, match="network option dropout"):
        resolve(tiny(network={"dropout": 2.0}), chips)
    with pytest.raises(ConfigError, match="unknown --preset"):
        resolve(tiny(preset="huge"), chips)
    with pytest.raises(ConfigError, match="--crop 36 must be a multiple of 8"):
        resolve(tiny(crop_px=36), chips)


def test_data_order_is_one_permutation_per_epoch() -> None:
    order = [i for step in range(5) for i in batch_indices(seed=1, step=step, batch_size=4, n=10)]
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))
    assert order[:10] != order[10:20], "every epoch gets its own order"
    assert batch_indices(seed=1, step=3, batch_size=4, n=10) == order[12:16]  # pure in (seed, step)
    assert batch_indices(seed=2, step=0, batch_size=4, n=10) != order[:4]


def test_schedules() -> None:
    config = tiny(lr=1e-4, warmup_steps=4)
    assert [lr_at(config, s) for s in (0, 1, 3, 100)] == pytest.approx([2.5e-5, 5e-5, 1e-4, 1e-4])
    ramped = ema_beta(batch_size=24, images_seen=24, halflife_kimg=500, rampup_ratio=0.05)
    assert ramped == pytest.approx(0.5 ** (24 / 1.2))
    late = ema_beta(batch_size=24, images_seen=10**9, halflife_kimg=500, rampup_ratio=0.05)
    assert late == pytest.approx(0.5 ** (24 / 500_000))
    assert ema_beta(batch_size=24, images_seen=0, halflife_kimg=500, rampup_ratio=None) == late


def test_interrupts_wait_for_the_end_of_the_update() -> None:
    done: list[str] = []

    def update() -> None:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("update finished")

    with pytest.raises(KeyboardInterrupt):
        update()
    assert done == ["update finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_refdiff_upscale_runs_with_the_exported_model(chips: Path, tmp_path: Path) -> None:
    """The model a run exports is what ``refdiff upscale --model`` takes (bundled scene)."""
    sample = REPO_ROOT / "sample_data"
    if not (sample / "lr.tif").is_file():
        pytest.skip("sample_data is not present")
    train(tiny(steps=1), chips, tmp_path / "run")
    out = tmp_path / "sr.tif"
    args = ["upscale", sample / "lr.tif", "--ref", sample / "ref.tif", "--mask", sample / "cd.tif"]
    args += ["-o", out, "--model", tmp_path / "run" / "model.safetensors", "--steps", "1"]
    result = run_cli([str(a) for a in args], env=ONE_THREAD, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 0


def test_changed_chips_give_a_warning_on_resume(chips: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(steps=1), chips, run)
    changed = tmp_path / "chips"
    shutil.copytree(chips, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["options"]["note"] = "re-prepared"
    (changed / "manifest.json").write_text(json.dumps(manifest))
    report = train(tiny(steps=2), changed, run)
    assert report.start_step == 1
    assert any("chips differ" in w for w in report.warnings)


def test_residual_target_trains_on_hr_minus_lr_up(chips: Path, tmp_path: Path) -> None:
    """The residual target: card fields, and its validation starts at bicubic quality."""
    run = tmp_path / "run"
    train(tiny(steps=2, val_chips=2, target="residual"), chips, run)
    card = load_model(run / "model.safetensors").card
    assert card.target == "residual"
    assert card.sigma_data == 0.2  # filled from the target
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    (val,) = [s for s in stats if s["kind"] == "val"]
    # One denoising step of a barely trained residual model stays near LR_up.
    assert abs(val["psnr_sample"] - val["psnr_lr_up"]) < 1.0
    hr_run = tmp_path / "hr"
    train(tiny(steps=2, val_chips=2), chips, hr_run)
    stats = [json.loads(line) for line in (hr_run / "stats.jsonl").read_text().splitlines()]
    (val_hr,) = [s for s in stats if s["kind"] == "val"]
    assert val_hr["psnr_sample"] < val_hr["psnr_lr_up"] - 1.0  # the paper's target starts off


def test_init_from_starts_at_that_models_weights_and_records_it(
    chips: Path, tmp_path: Path, cli: CliRunner
) -> None:
    """Fine-tuning: step 0 of the new run has the given model's weights (net and EMA), the
    card records the file's sha256, and a model of another shape is refused with exit 2."""
    first = tmp_path / "first"
    train(tiny(steps=3, lr_method="mixed", synthesize_fraction=0.5), chips, first)
    start = first / "model.safetensors"
    again = tiny(steps=1, init_from=str(start), lr=1e-12, warmup_steps=0)
    report = train(again, chips, tmp_path / "second")
    before = load_model(start).denoiser.net.state_dict()
    after = load_model(report.model)
    assert all(
        torch.allclose(before[k], v, atol=1e-6) for k, v in after.denoiser.net.state_dict().items()
    )
    scratch = train(tiny(steps=1, lr=1e-12, warmup_steps=0), chips, tmp_path / "scratch")
    fresh = load_model(scratch.model).denoiser.net.state_dict()
    assert any(not torch.allclose(before[k], v) for k, v in fresh.items()), "init_from mattered"
    assert after.card.training["init_from_sha256"] == file_sha256(start)
    assert after.card.training["config"]["init_from"] == str(start)

    with pytest.raises(
        ConfigError,
        match=r"init_from .* cannot start this run: .*reference 'raw' \(the run: 'guided'\)",
    ):
        resolve(tiny(init_from=str(start), reference="guided", target="residual"), chips)
    code, _, err = cli(
        "train",
        chips,
        "-o",
        tmp_path / "third",
        "--init-from",
        start,
        "--preset",
        "small",
        "--crop",
        "32",
        "--dry-run",
    )
    assert code == 2 and "init_from" in err and "network" in err
    code, _, err = cli(
        "train",
        chips,
        "-o",
        tmp_path / "fifth",
        "--init-from",
        "default",
        "--crop",
        "32",
        "--dry-run",
    )
    assert code == 2 and "refdiff-small-x8.safetensors cannot start this run" in err
    code, _, err = cli(
        "train",
        chips,
        "-o",
        tmp_path / "fourth",
        "--init-from",
        chips / "missing.safetensors",
        "--crop",
        "32",
        "--dry-run",
    )
    assert code == 3 and "missing.safetensors" in err


def test_bad_synthesis_settings_are_config_errors(chips: Path) -> None:
    with pytest.raises(ConfigError, match="synthesis settings"):
        resolve(tiny(synthesis={"blur_probability": 2.0}), chips)
    with pytest.raises(ConfigError, match="synthesis settings"):
        resolve(tiny(synthesis={"no_such_range": 1}), chips)
