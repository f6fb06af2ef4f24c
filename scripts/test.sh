#!/usr/bin/env bash
# Set up the project with its test extras and run the whole test suite (unit and integration).
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/setup.sh test
. .venv/bin/activate
instruct-lf model fetch smollm2-135m
ruff check .
python -m pytest "$@"
