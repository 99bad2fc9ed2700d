"""Which engine an upscale runs: bicubic, guided or the diffusion model, from the options."""

from __future__ import annotations

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.errors import ConfigError
from refdiff_cli.model.checkpoint import default_model_installed, load_model
from refdiff_cli.model.device import resolve_device
from refdiff_cli.upscale.engines import BicubicEngine, DiffusionEngine, Engine, GuidedEngine

#: Scale of the bicubic engine when neither --scale nor a model says otherwise.
DEFAULT_BICUBIC_SCALE = 8


def load_engine(options: UpscaleOptions) -> Engine:
    """Build the engine the options ask for; ``auto`` uses the diffusion model when one exists."""
    wants_model = options.engine == "diffusion" or (
        options.engine == "auto" and (options.model is not None or default_model_installed())
    )
    if options.engine == "guided":
        scale = options.scale or DEFAULT_BICUBIC_SCALE
        return GuidedEngine(scale, ref_strength=options.ref_strength)
    if not wants_model:
        if options.ref_strength != 1.0:
            raise ConfigError(
                "--ref-strength has no effect on the bicubic engine, which ignores the reference",
                hint="use --engine guided or diffusion, or leave --ref-strength at 1",
            )
        return BicubicEngine(options.scale or DEFAULT_BICUBIC_SCALE)
    device = resolve_device(options.device)
    model = load_model(options.model, expected_sha256=options.model_sha256, scale=options.scale)
    sampler = options.resolved_sampler(model.card.sampler_config)
    return DiffusionEngine(
        model,
        sampler,
        device=device,
        precision=options.precision,
        ref_strength=options.ref_strength,
        compile=options.compile,
    )
