"""upscale: super-resolve georeferenced rasters tile by tile.

Options and the tile loop (``run``), engines, band routing, resume journal, batches of jobs
and torchrun.
"""
