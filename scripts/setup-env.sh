#!/usr/bin/env bash
# Create .venv (once) and install refdiff with its dev tools into it.
# Where no NVIDIA GPU is visible, the CPU build of torch is installed first, so pip does not
# pull a multi-GB CUDA build to satisfy `torch>=2.2`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        python -m pip install --quiet "torch>=2.2"
    else
        python -m pip install --quiet "torch==2.13.0" \
            || python -m pip install --quiet --index-url https://download.pytorch.org/whl/cpu "torch>=2.2"
    fi
fi
python -m pip install --quiet -e ".[dev]"
