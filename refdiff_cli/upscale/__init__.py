"""upscale: super-resolve georeferenced rasters tile by tile.

One job (``run``) with its files in and out (``job``), the engine choice (``engine_choice``),
the tile loop (``pipeline``), what is written (``outputs``, ``provenance``), the dry-run
estimates (``estimate``), engines, band routing, resume journal, batches of jobs and torchrun.
"""
