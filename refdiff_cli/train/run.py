"""The training tool: EDM training of Ref-Diff on prepared chips, with exact resume and DDP.

Every random draw of step k is a pure function of (seed, k, position in the global batch), as
in EDM2, so a run that is stopped and re-run resumes bit for bit, and a run split over N
processes (torchrun) sees the same crops, degradations, noise levels and noise as one process.
Dropout draws from torch's global generator, re-seeded per (seed, step, rank) inside a fork.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from refdiff_cli import __version__
from refdiff_cli.config import save_json, to_dict
from refdiff_cli.datasets.chips import make_batch
from refdiff_cli.diffusion.loss import masked_mean
from refdiff_cli.errors import Interrupted, TrainingDiverged
from refdiff_cli.events import EventHandler, Progress, Started, ignore_event
from refdiff_cli.model.checkpoint import load_model, save_model
from refdiff_cli.model.network import RefDiffUNet
from refdiff_cli.model.precond import Conditioning, EDMPrecond, diffusion_target
from refdiff_cli.train import state as ts
from refdiff_cli.train.options import TrainConfig
from refdiff_cli.train.plan import (
    TrainPlan,
    TrainReport,
    batch_indices,
    deterministic,
    init_model_path,
    lr_at,
    resolve,
)
from refdiff_cli.train.references import training_references
from refdiff_cli.train.validation import (
    batch_conditions,
    build_card,
    edm_loss_per_item,
    guided_config,
    training_loss,
    validate,
)

logger = logging.getLogger(__name__)

__all__ = ["TrainReport", "train"]


def train(
    config: TrainConfig,
    chips: Path,
    run_dir: Path,
    *,
    on_event: EventHandler = ignore_event,
) -> TrainReport:
    """Train (or resume training) a Ref-Diff model on ``chips`` into ``run_dir``.

    Re-running the same call resumes from the newest checkpoint that verifies. Under torchrun
    (WORLD_SIZE > 1) every process calls this; rank 0 alone writes files and emits events.

    Raises:
        ConfigError: invalid settings, or a resume whose config differs (exit 2).
        InputError: invalid chips (exit 3).
        OutputError: checkpoints or the model cannot be written (exit 4).
        TrainingDiverged: ``max_bad_steps`` consecutive non-finite steps (exit 1).
        KeyboardInterrupt, Interrupted: after saving a checkpoint at the step boundary.
    """
    plan = resolve(config, chips)
    started = False
    if plan.world_size > 1:
        if plan.device.type == "cuda":
            torch.cuda.set_device(plan.device)
        dist.init_process_group(backend="nccl" if plan.device.type == "cuda" else "gloo")
        started = True
    try:
        with deterministic(config.deterministic):
            trainer = _Trainer(plan, run_dir, on_event)
            return trainer.run()
    finally:
        if started:
            dist.destroy_process_group()


class _Trainer:
    """State and loop of one run (see ``train``)."""

    def __init__(self, plan: TrainPlan, run_dir: Path, on_event: EventHandler) -> None:
        self.plan, self.config = plan, plan.config
        self.main = plan.rank == 0
        self.on_event = on_event if self.main else ignore_event
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.stats_path = run_dir / "stats.jsonl"
        self.net = RefDiffUNet(plan.network, seed=self.config.seed).to(plan.device).train()
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.denoiser = EDMPrecond(self.net, sigma_data=self.config.target_sigma_data)
        self.optimizer = torch.optim.Adam(
            self.net.parameters(), lr=self.config.lr, betas=self.config.betas, eps=self.config.eps
        )
        self.model: torch.nn.Module = self.denoiser  # DDP-wrapped under torchrun
        self.loss_fn = training_loss(self.config)
        self.guided_config = guided_config(self.config)
        self.step = self.start_step = 0
        self.skipped = self.bad_streak = 0
        self.first_bad: int | None = None
        self.validation: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self.resumed_from: Path | None = None
        self.warnings: list[str] = []
        self.interval: list[float] = []  # losses of the good steps since the last log
        self.logged_step = 0
        self.grad_norm: float | None = None
        self.last_loss: float | None = None
        self.tick = time.monotonic()

    # -- set-up ----------------------------------------------------------------------------

    def _resume(self) -> None:
        """Load the newest checkpoint that verifies (rank 0 picks it), or start fresh."""
        found = None
        if self.main:
            ts.clean_partials(self.ckpt_dir)
            found = ts.newest_valid_checkpoint(self.ckpt_dir)
        step = -1 if found is None else int(found[2]["step"])
        chosen = torch.tensor([step], device=self.plan.device)
        if self.plan.world_size > 1:
            dist.broadcast(chosen, src=0)
        if int(chosen) < 0:
            self._start_fresh()
            return
        if found is not None:
            path, tensors, meta, warnings = found
            self.warnings += warnings
        else:
            path = ts.checkpoint_path(self.ckpt_dir, int(chosen))
            tensors, meta = ts.load_checkpoint(path)
        fingerprint = self.plan.train.fingerprint
        self.warnings += ts.check_resume(meta, to_dict(self.config), fingerprint, path=path)
        ts.unpack_state(tensors, meta["param_groups"], self.net, self.ema, self.optimizer)
        self.step = self.start_step = int(meta["step"])
        self.skipped, self.bad_streak = int(meta["skipped_steps"]), int(meta["bad_streak"])
        self.first_bad, self.validation = meta["first_bad_step"], meta["validation"]
        self.last_checkpoint = self.resumed_from = path
        self.logged_step = self.step
        logger.info("resuming %s from step %d (%s)", self.run_dir, self.step, path.name)
        if self.main:
            save_json(self.config, self.run_dir / "config.json")
            ts.truncate_stats(self.stats_path, self.step)

    def _start_fresh(self) -> None:
        if self.config.init_from is not None:
            path = init_model_path(self.config)
            start = load_model(path, expected_sha256=self.plan.init_sha256)
            weights = start.denoiser.net.state_dict()
            self.net.load_state_dict(weights)
            self.ema.load_state_dict(weights)
            logger.info("starting from the weights of %s", self.config.init_from)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_json(self.config, self.run_dir / "config.json")
            self.stats_path.write_text("", encoding="utf-8")

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> TrainReport:
        started = time.monotonic()
        self._resume()
        if self.plan.world_size > 1:
            self.model = DistributedDataParallel(self.denoiser)
        steps = self.config.steps
        self.on_event(Started(task="train", total=steps, unit="step"))
        self.on_event(Progress(task="train", done=self.step, total=steps, unit="step"))
        self.tick = time.monotonic()
        try:
            while self.step < steps:
                self._train_step()
                self._after_step()
                self.on_event(Progress(task="train", done=self.step, total=steps, unit="step"))
        except (KeyboardInterrupt, Interrupted):
            if self.main and self.last_saved_step() != self.step:
                self._checkpoint()
            logger.warning(
                "interrupted at step %d; checkpoint %s; rerun the same command to resume",
                self.step,
                self.last_checkpoint,
            )
            raise
        if self.plan.val is not None and (self.validation or {}).get("step") != self.step:
            self._validate()
        if self.main and self.last_saved_step() != self.step:
            self._checkpoint()
        elif self.main:
            self._export()
        return TrainReport(
            run_dir=self.run_dir,
            model=self.run_dir / "model.safetensors",
            checkpoint=self.last_checkpoint,
            resumed_from=self.resumed_from,
            start_step=self.start_step,
            step=self.step,
            images_seen=self.step * self.config.batch_size,
            skipped_steps=self.skipped,
            loss=self.last_loss,
            validation=self.validation,
            seconds=time.monotonic() - started,
            world_size=self.plan.world_size,
            rank=self.plan.rank,
            warnings=tuple(self.warnings),
        )

    def last_saved_step(self) -> int | None:
        found = ts.list_checkpoints(self.ckpt_dir)
        return found[-1][0] if found else None

    def _after_step(self) -> None:
        cfg = self.config
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            self._log()
        if self.plan.val is not None and cfg.val_every and self.step % cfg.val_every == 0:
            self._validate()
        if self.main and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
            self._checkpoint()

    def _train_step(self) -> None:
        cfg, plan, step = self.config, self.plan, self.step
        device = plan.device
        order = batch_indices(cfg.seed, step, cfg.batch_size, len(plan.train))
        local = list(range(plan.rank, cfg.batch_size, plan.world_size))  # global positions
        crop_gens = [ts.generator_for("crop", cfg.seed, step, j) for j in local]
        batch = make_batch(
            plan.train,
            [order[j] for j in local],
            crop_px=cfg.crop_px,
            scale=cfg.scale,
            generator=crop_gens,
        )
        batch = training_references(batch, cfg, step, local)
        hr, hr_valid = batch.hr.to(device), batch.hr_valid.to(device)
        lr_gens = [ts.generator_for("lr", cfg.seed, step, j) for j in local]
        prepared = batch_conditions(batch, hr, cfg, lr_gens, self.guided_config)
        cond = prepared.cond
        loss_gens = [ts.generator_for("loss", cfg.seed, step, j) for j in local]
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_norm = None
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(ts.derive_seed("dropout", cfg.seed, step, plan.rank))
            y = diffusion_target(hr, prepared.base, cfg.target)  # (b, C, c, c)
            per_pixel = edm_loss_per_item(
                self.loss_fn, self._denoise, y, cond, loss_gens, hr_valid
            )  # (b, C, c, c)
            loss = masked_mean(per_pixel, hr_valid)
        if plan.world_size > 1:
            # Weight so that the mean of the ranks' losses is the global masked mean.
            counts = torch.stack([hr_valid.sum(), torch.ones((), device=device)]).float()
            total = counts.clone()
            dist.all_reduce(total)
            loss = loss * (counts[0] * plan.world_size / total[0].clamp(min=1))
        value = loss.detach().clone()
        if plan.world_size > 1:
            dist.all_reduce(value)
            value /= plan.world_size
        ok = bool(torch.isfinite(value))
        if ok:
            loss.backward()  # type: ignore[no-untyped-call]
            ok = self._clip_gradients()
        with ts.deferred_signals():
            if ok:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(cfg, step)
                self.optimizer.step()
                images = (step + 1) * cfg.batch_size
                beta = ts.ema_beta(
                    batch_size=cfg.batch_size,
                    images_seen=images,
                    halflife_kimg=cfg.ema_halflife_kimg,
                    rampup_ratio=cfg.ema_rampup_ratio,
                )
                ts.ema_update(self.ema, self.net, beta)
                self.bad_streak, self.first_bad = 0, None
                self.interval.append(float(value))
            self.step += 1
        if not ok:
            self._bad_step(step, value)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        out: torch.Tensor = self.model(x, sigma, cond, dtype=self.plan.dtype)
        return out

    def _clip_gradients(self) -> bool:
        """Global gradient norm (identical on every rank after DDP's all-reduce); clip it."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        self.grad_norm = float(norm)
        if not math.isfinite(self.grad_norm):
            return False
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.net.parameters(), self.config.grad_clip, norm)
        return True

    def _bad_step(self, step: int, value: torch.Tensor) -> None:
        self.skipped += 1
        self.bad_streak += 1
        self.first_bad = step if self.first_bad is None else self.first_bad
        logger.warning(
            "step %d: loss %s, gradient norm %s: skipped (%d in a row, %d in all)",
            step,
            float(value),
            self.grad_norm,
            self.bad_streak,
            self.skipped,
        )
        if self.bad_streak >= self.config.max_bad_steps:
            good = self.last_checkpoint or "none (no checkpoint was written yet)"
            raise TrainingDiverged(
                f"loss not finite since step {self.first_bad}; last good checkpoint {good}",
                hint="lower --lr, set grad_clip, or check the chips for bad values",
            )

    # -- logging, validation, checkpoints ----------------------------------------------------

    def _log(self) -> None:
        now = time.monotonic()
        seconds, self.tick = now - self.tick, now
        images = (self.step - self.logged_step) * self.config.batch_size
        self.logged_step = self.step
        mean = sum(self.interval) / len(self.interval) if self.interval else None
        self.last_loss = mean if mean is not None else self.last_loss
        grad = (
            self.grad_norm if self.grad_norm is not None and math.isfinite(self.grad_norm) else None
        )
        self._write_stats(
            {
                "kind": "train",
                "step": self.step,
                "images_seen": self.step * self.config.batch_size,
                "loss": mean,
                "lr": lr_at(self.config, self.step - 1),
                "grad_norm": grad,
                "seconds": seconds,
                "images_per_s": images / seconds if seconds > 0 else None,
                "skipped_steps": self.skipped,
            }
        )
        self.interval = []

    def _write_stats(self, record: dict[str, Any]) -> None:
        if self.main:
            with self.stats_path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(record, sort_keys=True) + "\n")

    def _validate(self) -> None:
        if not self.main or self.plan.val is None:
            return
        ema = EDMPrecond(self.ema, sigma_data=self.config.target_sigma_data).eval()
        scores = validate(
            ema, self.plan.val, self.config, device=self.plan.device, dtype=self.plan.dtype
        )
        self.validation = {"step": self.step, **scores}
        self._write_stats({"kind": "val", **self.validation})
        self.tick = time.monotonic()

    def _checkpoint(self) -> None:
        path = ts.checkpoint_path(self.ckpt_dir, self.step)
        tensors, groups = ts.pack_state(self.net, self.ema, self.optimizer)
        meta = {
            "step": self.step,
            "images_seen": self.step * self.config.batch_size,
            "config": to_dict(self.config),
            "network": self.plan.network.to_dict(),
            "param_groups": groups,
            "chips_fingerprint": self.plan.train.fingerprint,
            "skipped_steps": self.skipped,
            "bad_streak": self.bad_streak,
            "first_bad_step": self.first_bad,
            "validation": self.validation,
            "refdiff_version": __version__,
        }
        try:
            ts.save_checkpoint(path, tensors, meta)
        except ValueError as exc:
            raise TrainingDiverged(f"{exc}; last good checkpoint {self.last_checkpoint}") from exc
        removed = ts.rotate_checkpoints(self.ckpt_dir, self.config.keep_checkpoints)
        logger.debug("checkpoint %s written; removed %s", path.name, [p.name for p in removed])
        self.last_checkpoint = path
        self._export()

    def _export(self) -> None:
        card = build_card(
            config=self.config,
            network=self.plan.network,
            manifest=self.plan.train.manifest,
            fingerprint=self.plan.train.fingerprint,
            step=self.step,
            validation=self.validation,
            init_sha256=self.plan.init_sha256,
        )
        save_model(self.run_dir / "model.safetensors", self.ema, card)
