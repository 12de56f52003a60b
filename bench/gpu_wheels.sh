#!/usr/bin/env bash
# Download, into .whl/ at the repository root, the wheels bench/gpu_check.sh installs on a GPU
# machine that has torch, transformers, numpy, tiktoken, safetensors, pyyaml, regex, tqdm,
# matplotlib, httpx and pytest but not the rest of scratchlm's dependencies (the lent H200's
# image: Python 3.12, x86-64, no network). Versions are the ones this project is tested with.
# .whl/ is git-ignored; it travels with `carry: [".whl"]` (about 10 MB).
#
#     bash bench/gpu_wheels.sh [PYTHON_VERSION]      # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
PIP=${PIP:-python3 -m pip}
WHEELS=(
  # curation's default steps (normalize, length, exact_dedup) and the shard writer
  ftfy==6.3.1 wcwidth==0.9.4 zstandard==0.25.0
  # the server
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 annotated-doc==0.0.7 typing-inspection==0.4.5 opentelemetry-api==1.45.2
  typing-extensions==4.16.0
)
mkdir -p .whl
$PIP download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"
ls -1 .whl
du -sh .whl
