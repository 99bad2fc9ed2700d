"""The options of ``refdiff train`` (``TrainConfig``): network, data, optimiser, schedule.

Stdlib only, like ``config.py`` whose dataclass conventions and round trips it follows, so the
CLI can parse and validate them without importing torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from refdiff_cli.config import TARGET_SIGMA_DATA, ReferenceMode, require

TrainLRMethod = Literal["realistic", "bicubic", "mixed", "stored"]
TrainPrecision = Literal["fp32", "bf16"]
TrainTarget = Literal["hr", "residual"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """Everything ``refdiff train`` needs besides the chips and run folders.

    Defaults suit a CPU run of the "small" preset; the paper's values are in the comments.
    Sizes are HR pixels, ``batch_size`` is the global batch over all processes.

    Attributes:
        preset: network preset ("tiny", "small", "paper").
        network: overrides of the preset's ``NetworkConfig`` fields (e.g. {"dropout": 0.0}).
        scale: super-resolution factor; equals the chips' ``lr_scale`` with ``lr_method`` stored.
        crop_px: training crop edge (paper 256), a multiple of the scale and the network's size
            multiple, at most the chip size.
        batch_size: global effective batch per optimizer step (paper 24).
        steps: optimizer steps in total (paper: 10 M images / 24 = 416,667); may be raised on
            resume to train longer.
        lr: Adam learning rate after warm-up (paper 1e-4).
        betas, eps: Adam's moment decay rates and epsilon (paper 0.9/0.999, 1e-8).
        warmup_steps: linear learning-rate warm-up from lr / warmup_steps to lr (0 = none).
        ema_halflife_kimg: EMA half-life in thousands of images (EDM 500).
        ema_rampup_ratio: the half-life is at most this fraction of the images seen so far
            (EDM 0.05), or None for a fixed half-life.
        target: "hr" (the paper: the network generates the HR image) or "residual" (it
            generates HR - LR_up; the estimate of an untrained network is then LR_up).
        sigma_data: standard deviation of the target in model space (EDM's sigma_data); None
            takes the target's: 0.5 for "hr", 0.2 for "residual" (measured on cd_pairs + OSCD
            chips: 0.18).
        lr_method: how each step's LR is made: "realistic" (on-the-fly random degradation,
            the paper's training LR), "bicubic" (antialiased), "mixed" (each item by
            antialiased bicubic or by area averaging, half each: the two ways GIS tools make
            coarse rasters, ``gdalwarp -r cubic`` / ``-r average``), or "stored" (the chips'
            real LR images).
        seed: seed of every random draw (weights, data order, crops, degradations, noise).
        device: auto, cpu, cuda or cuda:N (under torchrun each rank takes cuda:LOCAL_RANK).
        precision: fp32 (paper) or bf16 (autocast, CUDA only).
        deterministic: ``torch.use_deterministic_algorithms(True)`` during training.
        checkpoint_every: steps between checkpoints (one is also written at the end and on
            Ctrl-C / SIGTERM).
        keep_checkpoints: newest checkpoints kept (older ones are deleted once the newest
            verifies).
        log_every: steps between ``stats.jsonl`` lines.
        val_every: steps between validations (0 = only at the end; none without val chips).
        val_chips: validation chips used (the first ones of the val split).
        grad_clip: clip the global gradient norm to this value, or None.
        max_bad_steps: consecutive steps with a non-finite loss or gradient before giving up.
        reference: what the network's reference input holds: "raw" (the warped reference,
            the paper) or "guided" (the guided estimate and its trust weight; the residual
            target is then HR - guided estimate). See ``model/precond.prepare_conditions``.
        synthesize_fraction: share of items whose reference is synthesised from their own
            HR with realistic nuisances (``train_references.py``), in [0, 1].
        drop_reference_fraction: share of items trained without a reference (mask all
            "changed"), in [0, 1]; with ``synthesize_fraction`` at most 1.
        mean_fraction: share of items trained from the input 0 at ``sigma_mean`` (EDMLoss),
            which the "mean" sampler start relies on; in [0, 1).
        sigma_mean: that noise level, model units, and the exported card's sigma_max.
        guided: overrides of ``GuidedConfig`` (reference "guided"); the card stores the
            resolved values, so a model always runs with the guided transfer it learned on.
        synthesis: overrides of ``SynthesisConfig`` for the synthesised references (e.g.
            {"blur_probability": 0.2}).
        init_from: a model file (``.safetensors`` from ``refdiff train``) whose weights the
            run starts from (fine-tuning), or "default" for the bundled model; its network,
            scale, bands and reference mode must match the run's. None starts from random
            weights. Ignored on resume (the checkpoint holds the weights).
    """

    preset: str = "small"
    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    scale: int = 8
    crop_px: int = 128  # paper 256
    batch_size: int = 8  # paper 24
    steps: int = 20_000  # paper 416,667
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 500
    ema_halflife_kimg: float = 500.0
    ema_rampup_ratio: float | None = 0.05
    target: TrainTarget = "hr"
    sigma_data: float | None = None
    lr_method: TrainLRMethod = "realistic"
    seed: int = 0
    device: str = "auto"
    precision: TrainPrecision = "fp32"
    deterministic: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    val_every: int = 1000
    val_chips: int = 8
    grad_clip: float | None = None
    max_bad_steps: int = 5
    reference: ReferenceMode = "raw"
    synthesize_fraction: float = 0.0
    drop_reference_fraction: float = 0.0
    mean_fraction: float = 0.0
    sigma_mean: float = 5.0
    guided: dict[str, Any] = dataclasses.field(default_factory=dict)
    synthesis: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from: str | None = None

    @property
    def target_sigma_data(self) -> float:
        """EDM's sigma_data of the target (``sigma_data``, filled from ``target`` if unset)."""
        return TARGET_SIGMA_DATA[self.target] if self.sigma_data is None else self.sigma_data

    def __post_init__(self) -> None:
        require(isinstance(self.network, dict), "network", "must be a table of overrides")
        require(self.scale >= 2, "--scale", f"{self.scale}; use an integer >= 2")
        require(self.crop_px >= 8, "--crop", f"{self.crop_px} px; use at least 8")
        require(self.batch_size >= 1, "--batch-size", f"{self.batch_size}; use at least 1")
        require(self.steps >= 1, "--steps", f"{self.steps}; use at least 1")
        require(0 < self.lr < 1, "--lr", f"{self.lr}; use a learning rate in (0, 1)")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            f"{self.betas}; use two numbers in [0, 1)",
        )
        require(self.eps > 0, "eps", f"{self.eps}; must be positive")
        require(self.warmup_steps >= 0, "warmup_steps", f"{self.warmup_steps} is negative")
        require(self.ema_halflife_kimg >= 0, "ema_halflife_kimg", "must be >= 0")
        if self.ema_rampup_ratio is not None:
            require(self.ema_rampup_ratio > 0, "ema_rampup_ratio", "must be positive or unset")
        require(self.target in TARGET_SIGMA_DATA, "target", f"{self.target!r}; use hr or residual")
        require(self.target_sigma_data > 0, "sigma_data", f"{self.sigma_data}; must be positive")
        require(
            self.lr_method in ("realistic", "bicubic", "mixed", "stored"),
            "lr_method",
            f"{self.lr_method!r}; use realistic, bicubic, mixed or stored",
        )
        require(0 <= self.seed < 2**63, "--seed", f"{self.seed}; use 0 <= seed < 2**63")
        require(
            self.precision in ("fp32", "bf16"),
            "--precision",
            f"{self.precision!r}; training runs in fp32 or bf16 (fp16 would need loss scaling)",
        )
        for name in ("checkpoint_every", "keep_checkpoints", "log_every", "max_bad_steps"):
            value = getattr(self, name)
            require(value >= 1, name, f"{value}; use at least 1")
        require(self.val_every >= 0, "--val-every", f"{self.val_every} is negative")
        require(self.val_chips >= 0, "val_chips", f"{self.val_chips} is negative")
        if self.grad_clip is not None:
            require(self.grad_clip > 0, "grad_clip", f"{self.grad_clip}; must be positive")
        require(self.reference in ("raw", "guided"), "reference", f"{self.reference!r}")
        fractions = (self.synthesize_fraction, self.drop_reference_fraction)
        require(
            all(0 <= f <= 1 for f in fractions) and sum(fractions) <= 1,
            "synthesize_fraction, drop_reference_fraction",
            f"{fractions}; use shares in [0, 1] that add up to at most 1",
        )
        require(0 <= self.mean_fraction < 1, "mean_fraction", f"{self.mean_fraction}")
        require(self.sigma_mean > 0, "sigma_mean", f"{self.sigma_mean}; must be positive")
        require(isinstance(self.synthesis, dict), "synthesis", "must be a table of overrides")
