"""The latent factors: Linear CorEx over the compatibility rows of every batch, and the themes over them."""

import dagster as dg
import numpy as np

from instruct_lf_dagster.assets.matrix import read
from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.partitions import asset_key, batches
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.storage import Storage

KEPT_IDENTITY = 0.7  # below this share of properties keeping their factor, a refit is flagged (WARN)


def build(d: DiscoverySpec) -> list:
    """`<name>/latent_factors` with its checks, and `<name>/themes`."""
    versions = d.versions()
    common = {"group_name": d.name}

    @dg.asset(
        key=asset_key(d, "latent_factors"),
        ins={"vocabulary": dg.AssetIn(asset_key(d, "vocabulary"))},
        check_specs=[
            dg.AssetCheckSpec(
                "factors_kept_identity",
                asset=asset_key(d, "latent_factors"),
                description="Share of properties (in both fits) whose factor matched its factor of the last fit.",
            )
        ],
        deps=[asset_key(d, "compatibility")],  # read batch by batch from storage, never stacked whole
        kinds={"pytorch"},
        code_version=versions["latent_factors"],
        **common,
    )
    def latent_factors(
        context: dg.AssetExecutionContext, vocabulary: Vocabulary, compute: ComputeResource, storage: Storage
    ):
        """Linear CorEx fitted on the compatibility rows of every batch: properties grouped into latent factors.

        A refit matches its factors to the last fit's (`core.identity`): matched factors keep their public ids.

        With l1 = 0 (the default) the fit needs only statistics of the rows, summed one batch at a time; the
        paper's l1 > 0 is fitted with Adam on the rows themselves, so the whole matrix is then held in memory.
        """
        method = d.instruct_lf(compute.config())
        table = asset_key(d, "compatibility")
        keys = context.instance.get_dynamic_partitions(batches.name)

        source = storage.portable()  # `rows` may run on a Ray worker

        def rows(key: str) -> np.ndarray | None:
            part = read(source.open(), table, key, len(vocabulary))
            return None if part is None else part[1]

        # A refit after new data starts from the last weights: known properties keep their columns.
        previous = storage.load_artefact(asset_key(d, "latent_factors"))
        if method.config.factors.l1 == 0:
            stats = compute.statistics(keys, rows, len(vocabulary))  # batch by batch, here or on Ray
            n = stats.n
            if n < 2:
                raise dg.Failure(
                    f"{n} compatibility rows: materialise {d.name}/compatibility for the batches first"
                )
            factors = method.fit_factors_from_statistics(stats, vocabulary.properties, previous=previous)
        else:
            context.log.warning(
                f"{d.name}: l1 = {method.config.factors.l1} fits on the rows themselves: every batch in memory"
            )
            parts = [part for part in map(rows, keys) if part is not None]
            x = np.concatenate(parts or [np.zeros((0, len(vocabulary)), np.float32)])
            n = len(x)
            factors = method.fit_factors(x, vocabulary.properties, previous=previous)
        factors, found = factors.aligned_to(previous)
        context.log.info(f"{d.name}/latent_factors: {factors.n_factors} factors from {n} documents")
        corex = factors.model
        identity = found.summary() if found is not None else {"matched": "first fit"}
        yield dg.AssetCheckResult(
            check_name="factors_kept_identity",
            passed=found is None or found.kept_share >= KEPT_IDENTITY,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={**identity, "threshold": KEPT_IDENTITY},
        )
        yield dg.Output(
            factors,
            metadata={
                "documents": n,
                "properties": len(vocabulary),
                "factors": factors.n_factors,
                "non_empty_factors": len(factors.nonempty()),
                "objective": float(corex.objective_),
                "iterations": int(corex.n_iter_),
                "optimizer": corex.optimizer_,
                "warm_start": method.config.factors.warm_start
                and previous is not None
                and previous.n_factors == factors.n_factors,
                "top_factors": dg.MetadataValue.md(factors.describe(top=10)),
                **{f"identity_{key}": value for key, value in identity.items()},
            },
        )

    @dg.asset_check(
        asset=latent_factors,
        name="every_property_assigned",
        blocking=True,
        description="Every property belongs to exactly one factor.",
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

    @dg.asset(
        key=asset_key(d, "themes"),
        ins={"latent_factors": dg.AssetIn(asset_key(d, "latent_factors"))},
        deps=[asset_key(d, "compatibility")],  # read batch by batch from storage
        kinds={"pytorch"},
        code_version=versions["themes"],
        **common,
    )
    def themes(
        context: dg.AssetExecutionContext, latent_factors: Factors, compute: ComputeResource, storage: Storage
    ) -> Factors:
        """Factors grouped into a handful of themes: Linear CorEx over the documents' factor strengths (the
        paper's stacking), from statistics summed batch by batch. Its "properties" are the factor ids."""
        rows = latent_factors.ranked()
        table = asset_key(d, "compatibility")

        source = storage.portable()  # `strengths` may run on a Ray worker

        def strengths(key: str) -> np.ndarray | None:
            part = read(source.open(), table, key, len(latent_factors.properties))
            return None if part is None else latent_factors.strengths(part[1])[:, rows]

        keys = context.instance.get_dynamic_partitions(batches.name)
        stats = compute.statistics(keys, strengths, len(rows))
        if stats.n < 2 or not rows:
            raise dg.Failure(f"{stats.n} scored documents, {len(rows)} factors: nothing to group into themes")
        fitted = d.instruct_lf(compute.config()).fit_themes(stats, [latent_factors.ids[k] for k in rows])
        context.add_output_metadata(
            {
                "themes": len(fitted.nonempty()),
                "factors": len(rows),
                "members": dg.MetadataValue.md(
                    "\n".join(
                        f"- theme {fitted.ids[t]}: factors {', '.join(p for p, _ in fitted.members(t))}"
                        for t in fitted.ranked()
                    )
                ),
            }
        )
        return fitted

    return [latent_factors, every_property_assigned, themes]
