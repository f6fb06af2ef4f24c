"""What a discovery shows over time: each factor's prevalence batch by batch, with a drift check."""

import dagster as dg
import numpy as np
import pandas as pd

import instruct_lf_dagster.assets.display as display
from instruct_lf_dagster.core.curation import in_order, shown_groups
from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.drift import MIN_HISTORY, STRONG, Z_LIMIT, drifted, prevalence
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.partitions import asset_key, batches
from instruct_lf_dagster.resources.storage import Storage

PLOTTED = 8  # factors drawn in the prevalence plot: the largest


def build(d: DiscoverySpec) -> list:
    """`<name>/factor_prevalence` with its drift check, and `<name>/html_report`."""
    versions = d.versions()

    @dg.asset(
        key=asset_key(d, "factor_prevalence"),
        ins={
            "latent_factors": dg.AssetIn(asset_key(d, "latent_factors")),
            "factor_report": dg.AssetIn(asset_key(d, "factor_report")),
        },
        deps=[asset_key(d, "document_factors")],  # read batch by batch, in arrival order
        check_specs=[
            dg.AssetCheckSpec(
                "prevalence_drift",
                asset=asset_key(d, "factor_prevalence"),
                description=f"No factor's share in the newest batch lies more than {Z_LIMIT:g} standard "
                f"deviations from its history (judged once {MIN_HISTORY} earlier batches exist).",
            )
        ],
        kinds={"duckdb"},
        group_name=d.name,
        code_version=versions["factor_prevalence"],
    )
    def factor_prevalence(
        context: dg.AssetExecutionContext,
        latent_factors: Factors,
        factor_report: pd.DataFrame,
        storage: Storage,
    ):
        """For each batch in arrival order, each factor's share of documents where it is strong and its mean
        score (oriented: high means the document has the factor's properties), for the factors the report shows
        (a merge group scored as the sum of its members' oriented scores)."""
        names = dict(zip(factor_report["factor"], factor_report["name"], strict=True))
        # The factors the report shows (the discovery's curation), strongest first.
        groups = in_order(
            shown_groups(factor_report, latent_factors),
            [latent_factors.ids[k] for k in latent_factors.ranked()],
        )
        ids = list(groups)
        table = asset_key(d, "document_factors")
        frames, shares = [], []
        for key in context.instance.get_dynamic_partitions(batches.name):  # registration = arrival order
            scored = storage.read_table(table, [key])
            if scored.empty:
                continue
            scores = np.stack(scored["scores"].to_numpy())
            if scores.shape[1] != latent_factors.n_factors:
                context.log.warning(
                    f"{d.name}: batch {key} was scored by an older fit; rescore it to include it"
                )
                continue
            share, mean = prevalence(latent_factors.grouped(latent_factors.oriented(scores), groups))
            shares.append(share)
            frames.append(
                pd.DataFrame(
                    {
                        "position": len(shares) - 1,
                        "batch": key,
                        "factor": ids,
                        "name": [names.get(i, "") for i in ids],
                        "documents": len(scores),
                        "share_strong": share,
                        "mean_score": mean,
                    }
                )
            )
        if not frames:
            raise dg.Failure(f"no scored batch: materialise {d.name}/document_factors first")
        out = pd.concat(frames, ignore_index=True)
        history = np.array(shares)
        flagged, z = drifted(history)
        largest = list(np.argsort(-history.mean(axis=0), kind="stable")[:PLOTTED])
        yield dg.AssetCheckResult(
            check_name="prevalence_drift",
            passed=not flagged,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "newest_batch": out["batch"].iloc[-1],
                "batches": len(shares),
                "drifted": "; ".join(f"{ids[j]}: {names.get(ids[j], '')} (z {z[j]:+.1f})" for j in flagged)
                or (
                    "none"
                    if len(shares) > MIN_HISTORY
                    else f"not judged: fewer than {MIN_HISTORY + 1} batches"
                ),
            },
        )
        yield dg.Output(
            out,
            metadata={
                "batches": len(shares),
                "strong_score": STRONG,
                "trend": display.trend(
                    [str(b)[:20] for b in out["batch"].unique()],
                    history[:, largest],
                    [f"{ids[j]}: {names.get(ids[j], '')}" for j in largest],
                ),
            },
        )

    return [factor_prevalence]
