"""The key of this machine under which its llama.cpp build is cached."""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path


def machine_key() -> str:
    """A short key of this CPU (model and instruction-set flags), architecture and Python version.

    A llama.cpp build tuned for one CPU may crash on an older one, so cached wheels live under this key.
    scripts/install_llama.sh computes the same key.
    """
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []

    def first(prefix: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(prefix)), "")

    model = first("model name") or platform.processor()
    flags = " ".join(sorted(first("flags").split()))
    text = "\n".join([model, flags, platform.machine(), sys.implementation.cache_tag])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
