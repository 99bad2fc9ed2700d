"""refdiff: reference-based super-resolution of georeferenced rasters with Ref-Diff."""

__version__ = "0.1.0"
