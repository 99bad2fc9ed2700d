"""Engines turn a batch of normalised tiles (LR, Ref, mask) into super-resolved tiles.

An engine never sees a file, a CRS or a tile plan: ``upscale.py`` feeds it tensors in model
space (image bands in [-1, 1], mask in [0, 1]) together with each tile's absolute output
origin, and blends what comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol, cast

import torch

from refdiff_cli.config import Precision, ReferenceMode, SamplerConfig, to_dict
from refdiff_cli.data.masks import MaskChannel, channel_kind
from refdiff_cli.data.normalize import Normalization
from refdiff_cli.data.resample import UpsampleMode, upsample
from refdiff_cli.diffusion.noise import PixelNoise, make_noise_fn
from refdiff_cli.diffusion.sampler import initial_state, sample
from refdiff_cli.errors import ConfigError
from refdiff_cli.model.checkpoint import LoadedModel
from refdiff_cli.model.device import check_precision
from refdiff_cli.model.precond import (
    Conditioning,
    Prepared,
    image_from_target,
    prepare_conditions,
)
from refdiff_cli.reference.guided import GuidedConfig, GuidedResult, guided_transfer

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineBatch:
    """One batch of tiles in model space.

    Attributes:
        lr: (B, C, h, w) LR tiles in [-1, 1]; invalid pixels already filled.
        ref: (B, C, H, W) reference warped onto the output tiles, in [-1, 1]; H = h * scale.
        ref_valid: (B, 1, H, W) bool, False where the reference has no data.
        mask: (B, 1, H, W) change mask in [0, 1] (1 = changed).
        origins: absolute output-pixel (row, col) of each tile's top-left corner; keys the noise.
        seed: run seed; with ``origins`` it fixes every random draw.
        ref_shift: (B, 2, H, W) the guided registration of ``ref`` to ``lr`` (output pixels,
            ``guided.reference_shift`` with the engine's ``guided_config``), when the pipeline
            made it already (for the change estimate); None: the engine registers.
    """

    lr: torch.Tensor
    ref: torch.Tensor
    ref_valid: torch.Tensor
    mask: torch.Tensor
    origins: tuple[tuple[int, int], ...]
    seed: int
    ref_shift: torch.Tensor | None = None


class Engine(Protocol):
    """What ``upscale`` needs from an engine."""

    name: str
    sha256: str | None
    scale: int
    bands: int | None  # None: any number of bands
    margin_px: int  # blend weight is zero this close to an interior tile edge
    size_multiple: int  # tile height and width must be multiples of this
    tile_px: int  # default tile edge, output pixels
    overlap_px: int  # default overlap, output pixels
    normalization: Normalization  # how input values are stretched to model space
    mask_channel: MaskChannel | None  # the mask channel the model was trained on (None: any)
    uses_reference: bool  # False: the reference is read and checked but never changes the output
    guided_config: GuidedConfig | None  # the guided transfer's constants, if the engine has one

    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        """Return (B, C, H, W) float32 outputs in model space."""
        ...

    def reference_weight(self, batch: EngineBatch) -> torch.Tensor:
        """(B, 1, H, W) how much of each output pixel is the reference's detail.

        Band 1 of ``--trust-out`` (``reference/trust.py``).
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Settings that determine the output (written into the output's provenance tags)."""
        ...


class BicubicEngine:
    """Bicubic upsampling of the LR: the baseline, and the engine that tests the pipeline.

    Ref and mask are still read and aligned (so every check runs) but not used.
    """

    name = "bicubic"
    sha256: str | None = None
    bands: int | None = None
    size_multiple = 1
    normalization = Normalization()
    mask_channel: MaskChannel | None = None
    uses_reference = False
    guided_config: GuidedConfig | None = None

    def __init__(self, scale: int) -> None:
        self.scale = scale
        # Bicubic reaches 2 LR pixels; tile edges are replicate-padded, so trim that reach.
        self.margin_px = 2 * scale
        self.overlap_px = 8 * scale
        self.tile_px = 64 * scale

    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        # Not clamped: values beyond the stretch's percentiles are real data here.
        return upsample(batch.lr.float(), self.scale, clamp=False)

    def reference_weight(self, batch: EngineBatch) -> torch.Tensor:
        return torch.zeros_like(batch.mask[:, :1], dtype=torch.float32)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "scale": self.scale}


class GuidedEngine(BicubicEngine):
    """The classical guided reference transfer of ``reference/guided.py``: registration, colour
    match, trust weighting and LR consistency, on the CPU in a fraction of the model's time.

    Where the mask says changed, where the reference has no data or where it does not explain
    the LR, the output is bicubic. The blend margin covers the reach of its windows.
    ``ref_strength`` S scales the reference's contribution: ``U(L) + S (X - U(L))``.
    """

    name = "guided"
    uses_reference = True

    def __init__(
        self, scale: int, config: GuidedConfig | None = None, *, ref_strength: float = 1.0
    ) -> None:
        super().__init__(scale)
        self.guided_config = config or GuidedConfig()
        self.ref_strength = ref_strength
        reach = self.guided_config.reach_lr() * scale
        self.tile_px = max(64 * scale, 4 * reach)
        self.overlap_px = 2 * reach
        self.margin_px = reach // 2

    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        estimate = self._transfer(batch).estimate
        if self.ref_strength == 1.0:
            return estimate
        lr_up = upsample(batch.lr.float(), self.scale, clamp=False)
        return lr_up + self.ref_strength * (estimate - lr_up)

    def reference_weight(self, batch: EngineBatch) -> torch.Tensor:
        return self.ref_strength * self._transfer(batch).weight

    def _transfer(self, batch: EngineBatch) -> GuidedResult:
        return guided_transfer(
            batch.lr.float(),
            batch.ref.float(),
            mask=batch.mask.float(),
            ref_valid=batch.ref_valid,
            scale=self.scale,
            config=self.guided_config,
            shift=batch.ref_shift,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "scale": self.scale,
            "guided": to_dict(self.guided_config),
            "ref_strength": self.ref_strength,
        }


def compiled(module: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``module`` through ``torch.compile`` (inductor, weights frozen as constants, one shape
    per tile size); a compiler failure on the first call becomes a ConfigError naming the fix.

    Frozen weights let inductor pre-pack the convolutions for the CPU's kernels: 0.75-0.85x
    the time per network call; the compile takes a minute or more per tile shape and thread
    count, then inductor's on-disk cache cuts it to 25-60 s per process.
    """
    network = torch.compile(module, dynamic=False, options={"freezing": True})

    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        try:
            return cast(torch.Tensor, network(*args, **kwargs))
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            raise ConfigError(
                f"--compile: torch.compile failed on this machine: {str(exc).splitlines()[0]}",
                hint="run without --compile (on the CPU it needs a working C++ compiler)",
            ) from exc

    return run


class DiffusionEngine:
    """Ref-Diff: EDM sampling of the HR tile conditioned on LR_up, Ref and the change mask.

    Where the reference has no data, the tile is conditioned on LR_up in place of Ref and
    the mask says "changed", so the network reconstructs from LR alone there.

    On the CPU the network sees one tile at a time: a batched convolution sums in another
    order than a single one (measured: 4.7e-6 apart), which the sampler amplifies into
    different bytes. So CPU results are identical for every ``--batch-size``; on GPUs the
    whole batch goes through the network at once, for throughput.

    ``ref_strength`` S != 1 guides every denoiser call between the reference-on prediction
    and the reference-off one (mask all "changed", which the training's reference dropout
    taught): ``D = D_off + S (D_on - D_off)``, both as images (their residual bases differ),
    like classifier-free guidance. It costs a second network evaluation per call.

    ``compile`` runs the network through ``compiled`` (``torch.compile``): outputs equal the
    eager network's up to float rounding.
    """

    name = "diffusion"
    uses_reference = True

    def __init__(
        self,
        model: LoadedModel,
        sampler: SamplerConfig,
        *,
        device: torch.device,
        precision: Precision,
        ref_strength: float = 1.0,
        compile: bool = False,
    ) -> None:
        card = model.card
        self.model = model
        self.ref_strength = ref_strength
        self.sampler = sampler
        self.device = device
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.sha256: str | None = model.sha256
        self.scale = card.scale
        self.bands: int | None = len(card.bands)
        self.margin_px = card.margin_px
        self.tile_px = card.tile_px
        self.overlap_px = card.overlap_px
        self.size_multiple = math.lcm(card.scale, model.denoiser.net.config.size_multiple)
        self.normalization = Normalization.from_dict(card.normalization)
        self.target = card.target
        # The card has validated both fields against these literals.
        self.reference = cast(ReferenceMode, card.reference)
        self.upsample_mode = cast(UpsampleMode, card.lr_upsample)
        self.guided_config = card.guided_config
        self.mask_channel: MaskChannel | None = channel_kind(card.mask_encoding)
        if self.target == "residual" and sampler.start == "lr":
            raise ConfigError(
                "--start lr begins the chain at sigma_max x LR_up, but this model generates "
                "the residual HR - LR_up",
                hint="use --start noise",
            )
        check_precision(device, precision)
        # oneDNN's CPU convolutions run faster on channels-last tensors (the bundled network,
        # a 512 px tile: 0.72 -> 0.65 s on 2 cores, benchmarks/throughput.py), with the same
        # values up to float rounding.
        # Not measured on GPUs, so they keep the layout the network was trained in.
        self.memory_format = (
            torch.channels_last if device.type == "cpu" else torch.contiguous_format
        )
        # Module.to takes memory_format (documented); torch's type stubs omit it.
        self.denoiser = model.denoiser.to(device, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.network: Callable[..., torch.Tensor] = (
            compiled(self.denoiser) if compile else self.denoiser
        )
        self.network_batch = 1 if device.type == "cpu" else None  # None: the whole batch

    @torch.no_grad()
    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        mask = batch.mask.to(self.device, torch.float32)
        prepared = self._prepare(batch, mask)
        unreferenced = None
        if self.ref_strength != 1.0:
            unreferenced = self._prepare(batch, torch.ones_like(mask))
        lr_up = prepared.cond.lr_up  # (B, C, H, W)
        field = PixelNoise(batch.seed, lr_up.shape[1])
        noise = make_noise_fn(field, batch.origins, (lr_up.shape[2], lr_up.shape[3]), self.device)
        x_T = initial_state(self.sampler.start, self.sampler.sigma_max, noise(0), lr_up)
        denoise = self._guided_denoiser(prepared, unreferenced, self.dtype)
        out = sample(self.sampler, denoise, x_T, noise=noise)
        if not bool(torch.isfinite(out).all()) and self.dtype != torch.float32:
            logger.warning(
                "%s produced non-finite values in a tile batch at %s; recomputing it in fp32",
                self.precision,
                batch.origins[0],
            )
            denoise = self._guided_denoiser(prepared, unreferenced, torch.float32)
            out = sample(self.sampler, denoise, x_T, noise=noise)
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError(
                f"the model produced non-finite values for the tiles at {batch.origins}"
            )
        return image_from_target(out, prepared.base, self.target).float().cpu()

    @torch.no_grad()
    def reference_weight(self, batch: EngineBatch) -> torch.Tensor:
        """The guided trust weight (reference "guided"), or 1 - M where there is a reference."""
        mask = batch.mask.to(self.device, torch.float32)
        if self.reference == "guided":
            weight = self._prepare(batch, mask).cond.mask[:, 1:2]
        else:
            weight = (1 - mask[:, :1]) * batch.ref_valid.to(self.device)
        return (self.ref_strength * weight).float().cpu()

    def _prepare(self, batch: EngineBatch, mask: torch.Tensor) -> Prepared:
        return prepare_conditions(
            lr=batch.lr.to(self.device, torch.float32),
            ref=batch.ref.to(self.device, torch.float32),
            mask=mask,
            ref_valid=batch.ref_valid.to(self.device),
            scale=self.scale,
            reference=self.reference,
            upsample_mode=self.upsample_mode,
            guided_config=self.guided_config,
            shift=None if batch.ref_shift is None else batch.ref_shift.to(self.device),
        )

    def _guided_denoiser(
        self, on: Prepared, off: Prepared | None, dtype: torch.dtype
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The sampler's denoiser: reference-on, or guided towards/away from reference-off.

        Both branches see the same state; their estimates are combined as images (the
        reference-off estimate is relative to its own base, LR_up rather than the guided
        estimate), then expressed against the reference-on base the sampler works in. With
        the one-step "mean" sampler, S = 0 is exactly the model run with a mask saying
        everything changed.
        """
        on_denoise = self._denoiser(on.cond, dtype)
        if off is None:
            return on_denoise
        off_denoise = self._denoiser(off.cond, dtype)
        rebase = off.base - on.base if self.target == "residual" else torch.zeros_like(on.base)
        strength = self.ref_strength

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            d_on = on_denoise(x, sigma)
            d_off = off_denoise(x, sigma) + rebase
            return d_off + strength * (d_on - d_off)

        return denoise

    def _denoiser(
        self, cond: Conditioning, dtype: torch.dtype
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        batch = cond.lr_up.shape[0]
        step = self.network_batch or batch
        # The conditions are the same at every step: sliced and laid out once.
        parts = [
            (
                slice(i, i + step),
                Conditioning(
                    lr_up=self._laid_out(cond.lr_up[i : i + step]),
                    ref=self._laid_out(cond.ref[i : i + step]),
                    mask=self._laid_out(cond.mask[i : i + step]),
                ),
            )
            for i in range(0, batch, step)
        ]

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return torch.cat(
                [
                    self.network(
                        self._laid_out(x[part]), sigma[part], conditions, dtype=dtype
                    ).contiguous()
                    for part, conditions in parts
                ]
            )

        return denoise

    def _laid_out(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (B, C, H, W) in the network's memory layout (the same values)."""
        return tensor.contiguous(memory_format=self.memory_format)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "model": self.model.card.name,
            "model_path": str(self.model.path),
            "model_sha256": self.model.sha256,
            "scale": self.scale,
            "precision": self.precision,
            "sampler": to_dict(self.sampler),
            "ref_strength": self.ref_strength,
        }
