#!/usr/bin/env bash
# Set up .venv: CPU torch first (pinned: any other torch pulls a multi-GB CUDA build), the project with the
# given pip extras, and the embedded llama.cpp runtime (a wheel built once per machine and cached).
# Usage: scripts/setup.sh [EXTRAS]    e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="$(command -v python3.11 || command -v python3)"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".${extras:+[$extras]}"
bash scripts/install_llama.sh
mkdir -p .dagster_home
[ -f .dagster_home/dagster.yaml ] || cp dagster.yaml .dagster_home/dagster.yaml
