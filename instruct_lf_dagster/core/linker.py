"""The linker: a dual encoder Phi fine-tuned so that Phi(document) . Phi(property) scores compatibility.

Positive pairs are (document, each property proposed for it); every other property in a batch is a
negative (MultipleNegativesRankingLoss, p(c | x) is a softmax over the batch's properties).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from instruct_lf_dagster.core.config import ComputeConfig, LinkerConfig, MethodConfig, Truncation
from instruct_lf_dagster.core.encoder import is_shared, load_encoder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

Pair = tuple[str, str]
_METHOD, _COMPUTE = MethodConfig(), ComputeConfig()  # the defaults, declared in core.config
CONFIG_FILE = "linker.json"


@dataclass
class LinkerReport:
    """What `Linker.fit` did: per-epoch mean losses, the best validation loss and its epoch."""

    epochs_run: int
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_val_loss: float | None = None
    pairs: int = 0
    seconds: float = 0.0
    best_epoch: int | None = None


def positive_pairs(documents: Sequence[str], proposals: Sequence[Sequence[str]]) -> list[Pair]:
    """(document, property) for every property proposed for a document; blanks and repeats dropped."""
    if len(documents) != len(proposals):
        raise ValueError(f"{len(documents)} documents but {len(proposals)} proposal lists")
    pairs = (
        (document, prop)
        for document, props in zip(documents, proposals, strict=True)
        for prop in props
        if document.strip() and prop.strip()
    )
    return list(dict.fromkeys(pairs))


def no_duplicate_batches(
    pairs: Sequence[Pair], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Shuffle the pairs into batches where no document and no property occurs twice.

    A repeated document or property in a batch would be scored as its own negative (a false
    negative). Pairs that collide wait for a later batch, so every pair is used exactly once.
    """
    pending = torch.randperm(len(pairs), generator=generator).tolist()
    batches = []
    while pending:
        batch: list[int] = []
        documents: set[str] = set()
        properties: set[str] = set()
        waiting: list[int] = []
        for position, index in enumerate(pending):
            if len(batch) == batch_size:
                waiting.extend(pending[position:])
                break
            document, prop = pairs[index]
            if document in documents or prop in properties:
                waiting.append(index)
            else:
                batch.append(index)
                documents.add(document)
                properties.add(prop)
        batches.append(batch)
        pending = waiting
    return batches


class Linker:
    """A sentence encoder that scores (document, property) compatibility, fine-tunable on proposals.

    `encoder` is a SentenceTransformer (trained in place, unless it is a shared one from `load_encoder`:
    those are copied), a local model directory, or None for the packaged all-MiniLM-L6-v2.
    `truncation="tail"` keeps the end of documents longer than `max_seq_length` tokens (the latest
    turns of a dialogue), "head" their beginning; it applies to training and encoding alike.
    """

    def __init__(
        self,
        encoder: SentenceTransformer | str | Path | None = None,
        *,
        truncation: Truncation = _METHOD.truncation,
        max_seq_length: int = _METHOD.linker.max_seq_length,
        device: str = "cpu",
    ) -> None:
        if truncation not in ("head", "tail"):
            raise ValueError(f"truncation must be 'head' or 'tail', not {truncation!r}")
        _check_length(max_seq_length)
        if encoder is None or isinstance(encoder, (str, Path)):
            encoder = load_encoder(encoder, device=device)
        if is_shared(encoder):
            # Loaded encoders are shared process-wide; this linker trains and configures its own copy.
            encoder = copy.deepcopy(encoder)
        self.model = encoder.to(device)
        self.device = device
        self.truncation: Truncation = truncation
        self.max_seq_length = max_seq_length
        self.model.max_seq_length = max_seq_length
        self.model.tokenizer.truncation_side = "left" if truncation == "tail" else "right"
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """A stable id of the weights, truncation and length limit (a key for embedding caches)."""
        if self._fingerprint is None:
            digest = hashlib.sha1()
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            self._fingerprint = f"{digest.hexdigest()[:24]}-{self.truncation}-{self.max_seq_length}"
        return self._fingerprint

    def to(self, device: str) -> Linker:
        """This linker on `device` (itself when already there); the weights, and so the fingerprint, are kept."""
        if device == self.device:
            return self
        moved = Linker(
            self.model, truncation=self.truncation, max_seq_length=self.max_seq_length, device=device
        )
        moved._fingerprint = self._fingerprint
        return moved

    @property
    def dimension(self) -> int:
        """The embedding size."""
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int = _COMPUTE.encode_batch_size) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text (the encoder sorts by length itself)."""
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = _COMPUTE.encode_batch_size
    ) -> np.ndarray:
        """Document embeddings Phi(x) (truncated by the linker's policy)."""
        return self.encode(texts, batch_size=batch_size)

    def encode_properties(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Property embeddings Phi(c); properties are short, so larger batches pay off."""
        return self.encode(texts, batch_size=batch_size)

    def fit(
        self,
        documents: Sequence[str],
        proposals: Sequence[Sequence[str]],
        config: LinkerConfig | None = None,
        *,
        seed: int = 0,
        mini_batch_size: int = _COMPUTE.train_mini_batch_size,
        warmup: float = 0.1,
        progress: Callable[[int, float, float | None], None] | None = None,
    ) -> LinkerReport:
        """Fine-tune on (document, proposed property) pairs with in-batch negatives (`config`: the schedule).

        A seeded `val_fraction` of the pairs is held out; training stops once its loss has not improved
        for `patience` epochs and the best weights are kept. Batches larger than `mini_batch_size` are
        embedded in chunks with cached gradients (same loss, bounded memory). `train_seq_length` cuts texts
        shorter while training only (cost grows with it; None: the linker's own length, which encoding keeps
        using). `progress(epoch, train_loss, val_loss)` is called after every epoch.
        """
        config = config or LinkerConfig()
        self.model.max_seq_length = config.train_seq_length or self.max_seq_length
        try:
            return self._fit(
                positive_pairs(documents, proposals),
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                warmup=warmup,
                patience=config.patience,
                val_fraction=config.val_fraction,
                seed=seed,
                mini_batch_size=mini_batch_size,
                progress=progress,
            )
        finally:
            self.model.max_seq_length = self.max_seq_length
            self.model.eval()
            self._fingerprint = None

    def _fit(
        self,
        pairs: list[Pair],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        warmup: float,
        patience: int,
        val_fraction: float,
        seed: int,
        mini_batch_size: int,
        progress: Callable[[int, float, float | None], None] | None,
    ) -> LinkerReport:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(pairs), generator=generator).tolist()
        n_val = round(val_fraction * len(pairs))
        val = [pairs[i] for i in order[:n_val]]
        # A batch of one pair has no negatives: its loss is 0 by construction and teaches nothing.
        val_batches = [b for b in no_duplicate_batches(val, batch_size, generator) if len(b) > 1]
        if not val_batches:  # too few held-out pairs to score: train on all, without early stopping
            n_val, val = 0, []
        train = [pairs[i] for i in order[n_val:]]
        epoch_batches = [
            [b for b in no_duplicate_batches(train, batch_size, generator) if len(b) > 1]
            for _ in range(epochs)
        ]
        report = LinkerReport(epochs_run=0, pairs=len(pairs))
        total_steps = sum(map(len, epoch_batches))
        if total_steps == 0:
            log.warning(
                "linker: nothing to train (%d pairs, no batch with negatives); weights unchanged", len(pairs)
            )
            report.seconds = time.perf_counter() - started
            return report

        loss_fn = self._loss(batch_size, mini_batch_size)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        # The fused AdamW kernel is several times faster than the default loop (notably on CPU).
        fused = self.model.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01, fused=fused)
        warmup_steps = math.ceil(warmup * total_steps)
        schedule = partial(_warmup_linear, warmup_steps=warmup_steps, total_steps=total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

        best_state, stale = None, 0
        devices = [torch.device(self.device).index or 0] if torch.device(self.device).type == "cuda" else []
        # Dropout draws from torch's global RNG: fork it so a seed fixes training without leaking out.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for epoch, batches in enumerate(epoch_batches, start=1):
                self.model.train()
                losses = []
                for step, batch in enumerate(batches, start=1):
                    if step % max(1, len(batches) // 10) == 0:  # an epoch on a CPU can take many minutes
                        log.info("linker: epoch %d, batch %d of %d", epoch, step, len(batches))
                    loss = loss_fn(self._features(train, batch), None)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append((loss.item(), len(batch)))
                report.train_losses.append(_weighted_mean(losses))
                report.epochs_run = epoch
                val_loss = self._validation_loss(loss_fn, val, val_batches) if val_batches else None
                if progress is not None:
                    progress(epoch, report.train_losses[-1], val_loss)
                if val_loss is None:
                    continue
                report.val_losses.append(val_loss)
                if report.best_val_loss is None or val_loss < report.best_val_loss:
                    report.best_val_loss, report.best_epoch, stale = val_loss, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                else:
                    stale += 1
                    if stale >= patience:
                        break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        report.seconds = time.perf_counter() - started
        return report

    def _loss(self, batch_size: int, mini_batch_size: int) -> torch.nn.Module:
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MultipleNegativesRankingLoss,
        )

        if batch_size <= mini_batch_size:
            return MultipleNegativesRankingLoss(self.model)
        return CachedMultipleNegativesRankingLoss(self.model, mini_batch_size=mini_batch_size)

    def _features(self, pairs: Sequence[Pair], batch: list[int]) -> list[dict]:
        from sentence_transformers.util import batch_to_device

        columns = ([pairs[i][0] for i in batch], [pairs[i][1] for i in batch])
        return [batch_to_device(self.model.preprocess(column), self.model.device) for column in columns]

    def _validation_loss(
        self, loss_fn: torch.nn.Module, pairs: Sequence[Pair], batches: list[list[int]]
    ) -> float:
        self.model.eval()
        with torch.no_grad():
            return _weighted_mean([(loss_fn(self._features(pairs, b), None).item(), len(b)) for b in batches])

    def save(self, path: str | Path) -> Path:
        """Write the weights (safetensors, via sentence-transformers) and the truncation policy."""
        path = Path(path)
        self.model.save(str(path), create_model_card=False)
        config = {"truncation": self.truncation, "max_seq_length": self.max_seq_length}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", max_seq_length: int | None = None) -> Linker:
        """A linker saved by `save`; `max_seq_length` encodes at another length than the saved one."""
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # as load_encoder: no "Loading weights" bar per load
        path = Path(path)
        config = json.loads((path / CONFIG_FILE).read_text())
        # Loaded fresh, not through the shared encoder cache: a linker owns (and may retrain) its model.
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        return cls(
            model,
            truncation=config["truncation"],
            max_seq_length=max_seq_length or config["max_seq_length"],
            device=device,
        )


def _check_length(tokens: int) -> None:
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"max_seq_length must be a positive number of tokens, not {tokens!r}")


def _warmup_linear(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _weighted_mean(values: list[tuple[float, int]]) -> float:
    return sum(v * n for v, n in values) / sum(n for _, n in values)
