#!/usr/bin/env bash
# Install llama-cpp-python (the embedded LLM runtime) from a wheel built once per kind of machine.
#
# The wheel is compiled for the CPU it is built on (fastest, but it may not run on an older CPU), so it is
# cached under a key of the CPU model, its instruction-set flags, the architecture and the Python version:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/instruct-lf/wheels/<machine-key>/llama_cpp_python-<version>-*.whl
# Usage: scripts/install_llama.sh            install (skipped when the pinned version already imports)
#        scripts/install_llama.sh --print-key print this machine's key and exit
# Environment: PYTHON (default: python), PIP (default: "$PYTHON -m pip"), CMAKE_ARGS (added to the build's).
set -euo pipefail

VERSION="0.3.36"
PYTHON="${PYTHON:-python}"
PIP="${PIP:-$PYTHON -m pip}"

# Same recipe as instruct_lf_dagster.models.machine_key (a test keeps the two in step).
machine_key() {
    "$PYTHON" - <<'EOF'
import hashlib, platform, sys
from pathlib import Path

def first(prefix, lines):
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(prefix)), "")

cpuinfo = Path("/proc/cpuinfo")
lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
model = first("model name", lines) or platform.processor()
flags = " ".join(sorted(first("flags", lines).split()))
text = "\n".join([model, flags, platform.machine(), sys.implementation.cache_tag])
print(hashlib.sha256(text.encode()).hexdigest()[:16])
EOF
}

if [[ "${1:-}" == "--print-key" ]]; then
    machine_key
    exit 0
fi

if "$PYTHON" -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "llama-cpp-python $VERSION is already installed"
    exit 0
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/instruct-lf/wheels/$(machine_key)"
mkdir -p "$cache"
wheel="$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "$wheel" ]]; then
    echo "building llama-cpp-python $VERSION for this machine (several minutes, once) into $cache"
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    # llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the Xeons we run on, and a native
    # build turns them on wherever the CPU has AMX; an explicit -mno-* wins over -march=native in GCC and clang.
    if [[ "$(uname -m)" == "x86_64" ]]; then
        export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        export CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    fi
    # LLaVA (image input) is not used and is the slowest part of the build. No pip cache: it would hand back
    # a wheel built earlier with other flags.
    CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" $PIP wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -w "$build"
    built="$(ls "$build"/llama_cpp_python-"$VERSION"-*.whl)"
    # Copy then rename, so that an interrupted copy never looks like a finished wheel.
    cp "$built" "$cache/.partial"
    wheel="$cache/$(basename "$built")"
    mv "$cache/.partial" "$wheel"
fi
echo "installing $wheel"
$PIP install "$wheel"
