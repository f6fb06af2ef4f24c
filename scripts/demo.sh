#!/usr/bin/env bash
# Set up, fetch the embedded models, and discover latent factors on the demo corpus (Rotten Tomatoes snippets).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
instruct-lf model fetch
export DAGSTER_HOME="$PWD/.dagster_home"
instruct-lf demo "$@"
