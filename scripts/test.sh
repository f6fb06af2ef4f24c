#!/usr/bin/env bash
# Set up the project with its test extras and run the whole test suite: the fast tier and the integration tier.
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/setup.sh test
. .venv/bin/activate
instruct-lf model fetch smollm2-135m
instruct-lf model fetch qwen2.5-coder-1.5b-instruct  # the default model: its determinism is tested
ruff check .
python -m pytest "$@"
