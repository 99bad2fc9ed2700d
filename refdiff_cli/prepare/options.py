"""Options of ``refdiff prepare``: the CLI's flags as one validated, frozen record."""

from __future__ import annotations

import dataclasses

from refdiff_cli.errors import ConfigError
from refdiff_cli.prepare.sources import LAYOUT_OPTIONS, LayoutOption, MaskGridOption

#: Chips whose share of valid HR pixels is below this are skipped (``--min-valid``).
DEFAULT_MIN_VALID = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PrepareOptions:
    """Options of ``refdiff prepare`` (the CLI's flags, validated here).

    Attributes:
        layout: "auto" (per SRC: a .csv file is a list, a folder is detected as cd or paper,
            or as images with ``synthesize_changes``), or one of "cd", "paper", "csv",
            "images" for every SRC.
        scale: the super-resolution factor (>= 2); chip offsets are multiples of it and the
            paper layout's LR folder of this scale is stored.
        chip_px: chip edge in HR pixels, a multiple of ``scale``.
        stride_px: step between chips, a multiple of ``scale`` in [scale, chip_px]; None is
            ``chip_px`` (no overlap).
        val_fraction: share of un-prefixed source images sent to validation, in [0, 1].
        seed: seed of the split and of synthesised changes (>= 0).
        mask_encoding: "auto" (binary for cd, grey for paper, inferred for CSV masks),
            "binary", "grey" or the path of a class table.
        bands: 1-based bands to use, or None for all non-alpha bands.
        mask_grid: CSV masks without georeferencing: "own" (none allowed), or borrow the
            "ref" or "hr" grid of the same shape.
        synthesize_changes: make Ref and mask from HR (single-date sources).
        min_valid: smallest share (0, 1] of valid HR pixels a chip needs.
        shard_size: chips per shard file (>= 1).
        overwrite: replace an existing chips folder.
        dry_run: list sources and chip counts; write nothing.
    """

    layout: LayoutOption = "auto"
    scale: int = 8
    chip_px: int = 256
    stride_px: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    mask_encoding: str = "auto"
    bands: tuple[int, ...] | None = None
    mask_grid: MaskGridOption = "own"
    synthesize_changes: bool = False
    min_valid: float = DEFAULT_MIN_VALID
    shard_size: int = 512
    overwrite: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        def require(ok: bool, option: str, message: str, hint: str | None = None) -> None:
            if not ok:
                raise ConfigError(f"{option} {message}", hint=hint)

        require(
            self.layout in LAYOUT_OPTIONS,
            "--layout",
            f"{self.layout!r}: use auto, cd, paper, csv or images",
        )
        require(self.scale >= 2, "--scale", f"{self.scale}: use an integer >= 2")
        require(
            self.chip_px >= 8 and self.chip_px % self.scale == 0,
            "--chip",
            f"{self.chip_px}: use a multiple of the scale ({self.scale}), at least 8",
        )
        stride = self.stride
        require(
            self.scale <= stride <= self.chip_px and stride % self.scale == 0,
            "--stride",
            f"{stride}: use a multiple of the scale ({self.scale}) between {self.scale} and "
            f"the chip size ({self.chip_px})",
        )
        require(
            0.0 <= self.val_fraction <= 1.0, "--val-fraction", f"{self.val_fraction}: use [0, 1]"
        )
        require(self.seed >= 0, "--seed", f"{self.seed}: use an integer >= 0")
        require(self.shard_size >= 1, "--shard-size", f"{self.shard_size}: use at least 1")
        require(0.0 < self.min_valid <= 1.0, "--min-valid", f"{self.min_valid}: use (0, 1]")
        require(
            self.mask_grid in ("own", "ref", "hr"),
            "--mask-grid",
            f"{self.mask_grid!r}: use own, ref or hr",
        )
        require(
            self.bands is None or (len(self.bands) > 0 and min(self.bands) >= 1),
            "-b/--bidx",
            f"{self.bands}: bands are 1-based, e.g. -b 1,2,3",
        )
        require(
            not self.synthesize_changes or self.mask_encoding in ("auto", "binary"),
            "--mask-encoding",
            f"{self.mask_encoding!r} does not apply with --synthesize-changes",
            hint="synthesised masks are binary; drop --mask-encoding",
        )

    @property
    def stride(self) -> int:
        """The resolved stride in HR pixels."""
        return self.chip_px if self.stride_px is None else self.stride_px
