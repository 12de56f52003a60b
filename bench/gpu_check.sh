#!/usr/bin/env bash
# bench/gpu_check.sh - the GPU path, proven in one run of at most 8 minutes on one H100/H200:
# versions and the device, the `cuda` tests, bench/train_step.py at the GPT-2 124M shape in bf16
# with and without torch.compile (tokens/s, MFU of the measured bf16 matmul peak, our step
# against the nanoGPT-way step), bench/generate.py (decode tok/s against HF generate, bf16 and
# fp32), and `scratchlm run bench/gpu_check.yaml` on CUDA end to end. The steps are in
# bench/gpu_check.py; results go to $OUT/gpu_check.json and gpu_check.log (else bench/out/gpu/),
# rewritten after every step, and the last lines printed are the targets, PASS / MISS.
#
# It never installs torch (the GPU machine's own is used). Wheels found in .whl/ at the
# repository root (bench/gpu_wheels.sh downloads them: scratchlm's dependencies that the lent
# H200's image lacks - fastapi, uvicorn, pydantic, ftfy, zstandard...) are installed into
# /tmp/scratchlm-site first; the repository's src/ is imported directly (no pip install).
#
# Settings (environment):
#   GPU_CHECK_DRY_RUN=1   the same steps on the CPU at tiny sizes (also: bench/gpu_check.sh --cpu)
#   GPU_CHECK_STEPS=...   a comma list of versions,tests,train,train-compile,generate,run
#   GPU_CHECK_BUDGET=470  seconds for all steps together; a step that cannot fit is skipped
#   PYTHON=python3        the interpreter (default: .venv/bin/python if present, else python3)
#
# How the lead runs it with the `device` tool, from the repository root of the merged checkout:
#   1. once, here:  bash bench/gpu_wheels.sh          (fills .whl/, ~9 MB, git-ignored)
#   2. device.run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#      $OUT comes back with gpu_check.json and gpu_check.log; the reply's output_tail ends with
#      the targets table. A second try of the failing steps only, e.g.
#      device.run(command="GPU_CHECK_STEPS=tests GPU_CHECK_BUDGET=240 bash bench/gpu_check.sh",
#                 carry=[".whl"], timeout_s=300), then give_back.
# On any GPU machine with the dependencies installed: bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do [ "$arg" = --cpu ] && DRY=1; done
export GPU_CHECK_DRY_RUN=$DRY
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SITE=""
if [ "$DRY" != 1 ] && compgen -G ".whl/*.whl" >/dev/null \
   && "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  SITE=/tmp/scratchlm-site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl \
    || echo "gpu_check: installing .whl/ failed; the versions step lists what is missing"
fi
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gpu_check.py "$@"
