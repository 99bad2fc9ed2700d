"""Entry point for ``python -m refdiff_cli``."""

from refdiff_cli.cli import main

main()
