"""Adapters for dataset folders (cd, paper, CSV layouts) and chip shards (writing and reading)."""
