#!/usr/bin/env bash
# Set up .venv if needed, then upscale the bundled sample scene with the bundled default model.
# Writes out/sample_sr.tif (georeferenced, 8x the LR resolution) and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-env.sh
. .venv/bin/activate
mkdir -p out
refdiff upscale sample_data/lr.tif --ref sample_data/ref.tif --mask sample_data/cd.tif \
    -o out/sample_sr.tif --overwrite --seed 0 "$@"
