#!/usr/bin/env bash
# The one command for a device machine (see bench/gpu_sdxl.py): install the carried wheels the
# machine's Python lacks (diffusers, torchsde, trampoline, importlib_metadata; fetched here with
# `pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl`, carried with
# the run's `carry: [".whl"]`), then run the bench unbuffered and write the table under $OUT.
#
#   bash bench/device_run.sh            # on the device, from the repo root
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
if ! python3 -c "import diffusers, torchsde" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"
set -o pipefail
timeout 470 python3 bench/gpu_sdxl.py --out "$OUT/gpu_sdxl.md" "$@" 2>&1 | tee "$OUT/gpu_sdxl.log"
