"""A discovery's global steps over all batches: vocabulary -> linker -> latent factors -> factor report."""

import heapq
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd

from instruct_lf_dagster.assets import display
from instruct_lf_dagster.assets.matrix import read
from instruct_lf_dagster.assets.proposals import client_for
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.core.naming import FactorName, name_factors
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.partitions import DOCUMENTS, batches
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import Storage

if TYPE_CHECKING:
    from instruct_lf_dagster.components.discovery import Discovery

EXAMPLE_CHARS = 300  # of each top-scoring document kept in the report
KEPT_IDENTITY = 0.7  # below this share of properties keeping their factor, a refit is flagged (WARN)


def top_documents(
    storage: Storage, d: "Discovery", keys: list[str], factors: Factors, ranked: list[int], top: int = 3
) -> dict[int, list[str]]:
    """factor -> the texts of the `top` documents of `keys` that score highest on it, read batch by batch."""
    table, best = d.key("compatibility").to_python_identifier(), {k: [] for k in ranked}
    for key in keys:
        part = read(storage, table, key, len(factors.properties))
        if part is None:
            continue
        ids, x = part
        texts = storage.read_table(DOCUMENTS.to_python_identifier(), [key]).set_index("document_id")["text"]
        strengths = factors.strengths(x)
        for k in ranked:
            for i in np.argsort(-strengths[:, k], kind="stable")[:top]:
                heapq.heappush(best[k], (float(strengths[i, k]), key, ids[i], texts.get(ids[i], "")))
                if len(best[k]) > top:
                    heapq.heappop(best[k])
    return {k: [text for *_, text in sorted(entries, reverse=True)] for k, entries in best.items()}


def earlier_names(storage: Storage, d: "Discovery") -> dict[int, tuple[list[str], FactorName]]:
    """Factor id -> (members, name) in the stored factor report, if there is one."""
    table = d.key("factor_report").to_python_identifier()
    if not storage.has_table(table):
        return {}
    report = storage.read_table(table)
    if "name" not in report.columns:
        return {}
    return {
        int(k): (
            rows["property"].tolist(),
            FactorName(
                int(k), rows["name"].iloc[0], rows["description"].iloc[0], not rows["named_by_llm"].iloc[0]
            ),
        )
        for k, rows in report.groupby("factor", sort=True)
    }


def build(d: "Discovery") -> list:
    """The discovery-wide assets of `d` and their checks."""
    versions = d.versions()
    common = {"group_name": d.name}

    @dg.asset(
        key=d.key("vocabulary"),
        ins={"proposals": dg.AssetIn(d.key("proposals"))},
        kinds={"python"},
        code_version=versions["vocabulary"],
        **common,
    )
    def vocabulary(
        context: dg.AssetExecutionContext, proposals: pd.DataFrame, compute: ComputeResource
    ) -> Vocabulary:
        """Every proposed property, normalised; exact and near duplicates (by MiniLM cosine) folded together."""
        try:
            vocab = d.method(**compute.settings()).fit_vocabulary(proposals["properties"].map(list).tolist())
        except ValueError as error:
            raise dg.Failure(f"{error}: check the goal and the model") from error
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

    @dg.asset(
        key=d.key("linker"),
        ins={
            "documents": dg.AssetIn(DOCUMENTS),
            "proposals": dg.AssetIn(d.key("proposals")),
            "vocabulary": dg.AssetIn(d.key("vocabulary")),
        },
        kinds={"pytorch"},
        code_version=versions["linker"],
        **common,
    )
    def linker(
        context: dg.AssetExecutionContext,
        documents: pd.DataFrame,
        proposals: pd.DataFrame,
        vocabulary: Vocabulary,
        compute: ComputeResource,
    ) -> Linker:
        """The dual encoder, fine-tuned so a document sits close to the properties proposed for it."""
        joined = documents.merge(proposals, on=["batch", "document_id"], how="inner")
        try:
            model, report = d.method(**compute.settings()).fit_linker(
                joined["text"].tolist(),
                joined["properties"].map(list).tolist(),
                vocabulary,
                progress=lambda epoch, train, val: context.log.info(
                    f"{d.name}/linker: epoch {epoch} train loss {train:.4f} validation loss "
                    f"{val if val is None else round(val, 4)}"
                ),
            )
        except ValueError as error:
            raise dg.Failure(str(error)) from error
        context.add_output_metadata(
            {
                "pairs": report.pairs,
                "epochs_run": report.epochs_run,
                "best_val_loss": report.best_val_loss,  # None: too few pairs to hold any out
                "val_losses": str([round(v, 4) for v in report.val_losses]),
                "seconds": round(report.seconds, 1),
            }
        )
        return model

    @dg.asset(
        key=d.key("latent_factors"),
        ins={"vocabulary": dg.AssetIn(d.key("vocabulary"))},
        check_specs=[
            dg.AssetCheckSpec(
                "factors_kept_identity",
                asset=d.key("latent_factors"),
                description="Share of properties (in both fits) whose factor matched its factor of the last fit.",
            )
        ],
        deps=[d.key("compatibility")],  # read batch by batch from storage, never stacked whole
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
        method = d.method(**compute.settings())
        table = d.key("compatibility").to_python_identifier()
        keys = context.instance.get_dynamic_partitions(batches.name)

        source = storage.portable()  # `rows` may run on a Ray worker

        def rows(key: str) -> np.ndarray | None:
            part = read(source.open(), table, key, len(vocabulary))
            return None if part is None else part[1]

        # A refit after new data starts from the last weights: known properties keep their columns.
        previous = storage.load_artefact(d.key("latent_factors").to_python_identifier())
        if method.l1 == 0:
            stats = compute.statistics(keys, rows, len(vocabulary))  # batch by batch, here or on Ray
            n = stats.n
            if n < 2:
                raise dg.Failure(
                    f"{n} compatibility rows: materialise {d.name}/compatibility for the batches first"
                )
            factors = method.fit_factors_from_statistics(stats, vocabulary.properties, previous=previous)
        else:
            context.log.warning(
                f"{d.name}: l1 = {method.l1} fits on the rows themselves: every batch in memory"
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
                "warm_start": method.warm_start
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
        key=d.key("themes"),
        ins={"latent_factors": dg.AssetIn(d.key("latent_factors"))},
        deps=[d.key("compatibility")],  # read batch by batch from storage
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
        table = d.key("compatibility").to_python_identifier()

        source = storage.portable()  # `strengths` may run on a Ray worker

        def strengths(key: str) -> np.ndarray | None:
            part = read(source.open(), table, key, len(latent_factors.properties))
            return None if part is None else latent_factors.strengths(part[1])[:, rows]

        keys = context.instance.get_dynamic_partitions(batches.name)
        stats = compute.statistics(keys, strengths, len(rows))
        if stats.n < 2 or not rows:
            raise dg.Failure(f"{stats.n} scored documents, {len(rows)} factors: nothing to group into themes")
        fitted = d.method(**compute.settings()).fit_themes(stats, [latent_factors.ids[k] for k in rows])
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

    @dg.asset(
        key=d.key("factor_report"),
        ins={"latent_factors": dg.AssetIn(d.key("latent_factors")), "themes": dg.AssetIn(d.key("themes"))},
        deps=[DOCUMENTS, d.key("compatibility")],  # the documents that score highest, read batch by batch
        kinds={"duckdb"},
        code_version=versions["factor_report"],
        **common,
    )
    def factor_report(
        context: dg.AssetExecutionContext,
        latent_factors: Factors,
        themes: Factors,
        llm: LLMResource,
        storage: Storage,
    ) -> pd.DataFrame:
        """Each factor's name, one sentence on it, its theme, its properties by mutual information and the
        documents that score highest on it: what discovery found.

        The discovery's LLM names each factor from its top properties and the 3 documents that score highest on
        it, and each theme from its factors' names (cached like proposals); a failed or unusable answer falls
        back to the top property (or factor), flagged.
        """
        ranked, ids = latent_factors.ranked(), latent_factors.ids
        keys = context.instance.get_dynamic_partitions(batches.name)
        examples = top_documents(storage, d, keys, latent_factors, ranked)
        examples = {ids[k]: texts for k, texts in examples.items()}
        members = {ids[k]: [p for p, _ in latent_factors.members(k)] for k in ranked}
        client = client_for(d, llm, storage)

        def progress(what: str):
            def report(done: int, total: int) -> None:
                if done == total or done % 5 == 0:
                    context.log.info(f"{d.name}/factor_report: named {done} of {total} {what}")

            return report

        earlier = earlier_names(storage, d)
        names, usage = name_factors(
            client, d.to_goal(), members, examples, previous=earlier, progress=progress("factors")
        )
        kept = sum(n.factor in earlier and earlier[n.factor][1].name == n.name for n in names)
        named = {n.factor: n for n in names}
        theme_of = {int(p): themes.ids[t] for p, t in zip(themes.properties, themes.assignment, strict=True)}
        groups = {
            themes.ids[t]: [named[int(p)].name for p, _ in themes.members(t)] for t in themes.nonempty()
        }
        theme_names, theme_usage = name_factors(
            client, d.to_goal(), groups, {}, themes=True, progress=progress("themes")
        )
        theme_named = {n.factor: n.name for n in theme_names}
        report = latent_factors.to_frame()
        report["name"] = report["factor"].map(lambda k: named[k].name).astype("string")
        report["description"] = report["factor"].map(lambda k: named[k].description).astype("string")
        report["named_by_llm"] = report["factor"].map(lambda k: not named[k].fallback)
        report["theme"] = report["factor"].map(lambda k: theme_of.get(k, -1)).astype("int64")
        report["theme_name"] = report["theme"].map(lambda t: theme_named.get(t, "")).astype("string")
        # The documents behind the name, for the HTML report: the same few on each of the factor's rows.
        report["examples"] = report["factor"].map(lambda k: [t[:EXAMPLE_CHARS] for t in examples.get(k, [])])
        top = ranked[:20]
        column = {p: j for j, p in enumerate(latent_factors.properties)}
        columns = list(dict.fromkeys(column[p] for k in top for p, _ in latent_factors.members(k)[:3]))
        table = pd.DataFrame(
            [
                (
                    i,
                    named[i].name,
                    theme_named.get(theme_of.get(i, -1), ""),
                    len(members[i]),
                    "; ".join(members[i][:5]),
                )
                for i in (ids[k] for k in ranked)
            ],
            columns=["factor", "name", "theme", "size", "properties"],
        )
        context.add_output_metadata(
            {
                "goal": d.goal,
                "factors": len(ranked),
                "themes": len(theme_names),
                "names_kept": kept,
                "named_by_llm": sum(not n.fallback for n in names),
                "fallback_names": ", ".join(str(n.factor) for n in names if n.fallback) or "none",
                **{f"naming_{key}": value for key, value in (usage + theme_usage).as_metadata().items()},
                "top_factors": dg.MetadataValue.md(table.head(10).to_markdown(index=False)),
                "heatmap": display.heatmap(
                    latent_factors.model.mis,
                    top,
                    columns,
                    list(latent_factors.properties),
                    [f"{ids[k]}: {named[ids[k]].name}" for k in top],
                ),
            }
        )
        return report

    return [vocabulary, linker, latent_factors, every_property_assigned, themes, factor_report]
