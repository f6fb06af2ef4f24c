#!/usr/bin/env bash
# Set up, fetch the embedded models, and discover latent factors on the demo corpus (Rotten Tomatoes snippets).
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/setup.sh
. .venv/bin/activate
instruct-lf model fetch
export DAGSTER_HOME="$PWD/.dagster_home"
instruct-lf demo "$@"
