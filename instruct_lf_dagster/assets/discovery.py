"""Discovery over all batches: vocabulary -> linker -> latent factors -> factor report."""

from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from instruct_lf_dagster.assets import display
from instruct_lf_dagster.core.corex import LinearCorex
from instruct_lf_dagster.core.encoder import load_encoder
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.core.pipeline import auto_factors
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.storage import Storage


class VocabularyConfig(dg.Config):
    merge_threshold: float = Field(default=0.9, description="cosine above which two properties are merged")
    min_count: int = Field(default=1, description="drop properties proposed fewer times than this")


@dg.asset(group_name="discovery", kinds={"python"})
def vocabulary(
    context: dg.AssetExecutionContext,
    config: VocabularyConfig,
    proposals: pd.DataFrame,
    compute: ComputeResource,
) -> Vocabulary:
    """Every proposed property, normalised; exact and near duplicates (by MiniLM cosine) folded together."""
    encoder = load_encoder(device=compute.torch_device())

    def embed(texts: list[str]) -> np.ndarray:
        return encoder.encode(texts, batch_size=compute.encode_batch_size, normalize_embeddings=True)

    vocab = Vocabulary.fit(
        proposals["properties"].map(list), embed, threshold=config.merge_threshold, min_count=config.min_count
    )
    if not len(vocab):
        raise dg.Failure("the LLM proposed no usable property for any document: check the goal and the model")
    top = sorted(vocab.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    context.add_output_metadata(
        {
            "properties": len(vocab),
            "raw_strings": len(vocab.canonical),
            "near_duplicate_merges": vocab.merges,
            "most_proposed": dg.MetadataValue.md(
                pd.DataFrame(top, columns=["property", "count"]).to_markdown(index=False)
            ),
        }
    )
    return vocab


class LinkerConfig(dg.Config):
    truncation: Literal["head", "tail"] = Field(
        default="head", description="which end of long documents the encoder keeps ('tail' for dialogues)"
    )
    epochs: int = 20
    batch_size: int = 512
    lr: float = 5e-5
    patience: int = Field(default=2, description="epochs without validation improvement before stopping")
    val_fraction: float = 0.1
    train_seq_length: int | None = Field(
        default=None,
        description="cut documents to this many tokens while fine-tuning, to save time on a CPU "
        "(encoding still reads 256); empty: 256",
    )
    seed: int = 0


def training_pairs(documents: pd.DataFrame, proposals: pd.DataFrame, vocab: Vocabulary):
    """Document texts and their canonical properties, for documents that have any."""
    joined = documents.merge(proposals, on=["batch", "document_id"], how="inner")
    canonical = joined["properties"].map(lambda props: vocab.map(list(props)))
    keep = canonical.map(len) > 0
    return joined.loc[keep, "text"].tolist(), canonical[keep].tolist()


@dg.asset(group_name="discovery", kinds={"pytorch"})
def linker(
    context: dg.AssetExecutionContext,
    config: LinkerConfig,
    documents: pd.DataFrame,
    proposals: pd.DataFrame,
    vocabulary: Vocabulary,
    compute: ComputeResource,
) -> Linker:
    """The dual encoder, fine-tuned so a document sits close to the properties proposed for it."""
    texts, props = training_pairs(documents, proposals, vocabulary)
    if not texts:
        raise dg.Failure("no document has a property in the vocabulary: nothing to train the linker on")
    model = Linker(truncation=config.truncation, device=compute.torch_device())
    report = model.fit(
        texts,
        props,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        patience=config.patience,
        val_fraction=config.val_fraction,
        seed=config.seed,
        max_seq_length=config.train_seq_length,
        progress=lambda epoch, train, val: context.log.info(
            f"linker: epoch {epoch} train loss {train:.4f} validation loss {val if val is None else round(val, 4)}"
        ),
    )
    context.add_output_metadata(
        {
            "documents": len(texts),
            "pairs": report.pairs,
            "epochs_run": report.epochs_run,
            "best_val_loss": report.best_val_loss,  # None: too few pairs to hold any out
            "val_losses": str([round(v, 4) for v in report.val_losses]),
            "seconds": round(report.seconds, 1),
        }
    )
    return model


class FactorsConfig(dg.Config):
    n_factors: int = Field(
        default=0, description="number of latent factors; 0 = automatic (properties / 8, between 2 and 368)"
    )
    l1: float = Field(
        default=0.0,
        description="L1 penalty on the CorEx weights. 0: the fast quasi-Newton fit, properties spread over the "
        "factors. The paper's 0.9 (fitted with Adam) gives sparser weights but, on small corpora, puts nearly every "
        "property in a few factors (the 48-document demo: 3 of 21 factors used)",
    )
    seed: int = 0
    max_iter: int = Field(
        default=1000,
        description="step budget per annealing stage (7 stages; the noisy early stages use at most a tenth of it)",
    )
    warm_start: bool = Field(default=True, description="start from the previous fit when there is one")


def stack_compatibility(compatibility: pd.DataFrame, width: int) -> np.ndarray:
    """The documents x properties matrix from stored rows; rows of an older vocabulary are an error."""
    stale = sorted(set(compatibility.loc[compatibility["compatibility"].map(len) != width, "batch"]))
    if stale:
        raise dg.Failure(
            f"compatibility of batches {stale} was computed with an older vocabulary; "
            "re-materialise compatibility for every batch (the discovery job does) before fitting factors"
        )
    return np.stack(compatibility["compatibility"].to_numpy()).astype(np.float32)


def ranked(factors: Factors) -> list[int]:
    """Non-empty factors, strongest (total mutual information with their properties) first."""
    return sorted(factors.nonempty(), key=lambda k: (-factors.strength(k), k))


@dg.asset(group_name="discovery", kinds={"pytorch"})
def latent_factors(
    context: dg.AssetExecutionContext,
    config: FactorsConfig,
    compatibility: pd.DataFrame,
    vocabulary: Vocabulary,
    compute: ComputeResource,
    storage: Storage,
) -> Factors:
    """Linear CorEx fitted on the compatibility rows of every batch: properties grouped into latent factors."""
    x = stack_compatibility(compatibility, len(vocabulary))
    n_factors = config.n_factors or auto_factors(len(vocabulary))
    previous = storage.load_artefact("latent_factors") if config.warm_start else None
    # A refit after new data starts from the last weights: known properties keep their columns.
    warm = (
        previous.warm_start(vocabulary.properties) if previous and previous.n_factors == n_factors else None
    )
    context.log.info(
        f"fitting Linear CorEx: {x.shape[0]} documents x {x.shape[1]} properties -> {n_factors} factors"
        + (" (warm start)" if warm is not None else "")
    )
    corex = LinearCorex(
        n_factors,
        l1=config.l1,
        seed=config.seed,
        device=compute.torch_device(),
        max_iter=config.max_iter,
        threads=compute.thread_count(),
    ).fit(x, warm_start=warm)
    factors = Factors(corex, vocabulary.properties)
    context.add_output_metadata(
        {
            "documents": x.shape[0],
            "properties": x.shape[1],
            "factors": n_factors,
            "non_empty_factors": len(factors.nonempty()),
            "objective": float(corex.objective_),
            "iterations": int(corex.n_iter_),
            "optimizer": corex.optimizer_,
            "warm_start": warm is not None,
            "top_factors": dg.MetadataValue.md(factors.describe(top=10)),
        }
    )
    return factors


@dg.asset_check(
    asset=latent_factors, blocking=True, description="Every property belongs to exactly one factor."
)
def every_property_assigned(latent_factors: Factors) -> dg.AssetCheckResult:
    unassigned = [
        p for p, k in zip(latent_factors.properties, latent_factors.assignment, strict=True) if k < 0
    ]
    return dg.AssetCheckResult(
        passed=not unassigned,
        metadata={
            "properties": len(latent_factors.properties),
            "unassigned": ", ".join(unassigned) or "none",
        },
    )


@dg.asset(group_name="discovery", kinds={"duckdb"})
def factor_report(context: dg.AssetExecutionContext, latent_factors: Factors) -> pd.DataFrame:
    """Each factor's properties, ordered by mutual information: the readable result of discovery."""
    top = ranked(latent_factors)[:20]
    column = {p: j for j, p in enumerate(latent_factors.properties)}
    columns = list(dict.fromkeys(column[p] for k in top for p, _ in latent_factors.members(k)[:3]))
    context.add_output_metadata(
        {
            "factors": len(latent_factors.nonempty()),
            "top_factors": dg.MetadataValue.md(latent_factors.describe(top=10)),
            "heatmap": display.heatmap(
                latent_factors.model.mis, top, columns, list(latent_factors.properties)
            ),
        }
    )
    return latent_factors.to_frame()
