"""What a discovery shows over time: each factor's prevalence batch by batch (with a drift check), and the
HTML report people open."""

from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd

from instruct_lf_dagster.assets import display, html
from instruct_lf_dagster.core.drift import MIN_HISTORY, STRONG, Z_LIMIT, drifted, prevalence
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources.storage import Storage

if TYPE_CHECKING:
    from instruct_lf_dagster.components.discovery import Discovery

PLOTTED = 8  # factors drawn in the prevalence plot: the largest


def build(d: "Discovery") -> list:
    """`<name>/factor_prevalence` with its drift check, and `<name>/html_report`."""
    versions = d.versions()

    @dg.asset(
        key=d.key("factor_prevalence"),
        ins={
            "latent_factors": dg.AssetIn(d.key("latent_factors")),
            "factor_report": dg.AssetIn(d.key("factor_report")),
        },
        deps=[d.key("document_factors")],  # read batch by batch, in arrival order
        check_specs=[
            dg.AssetCheckSpec(
                "prevalence_drift",
                asset=d.key("factor_prevalence"),
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
        score (oriented: high means the document has the factor's properties)."""
        names = dict(zip(factor_report["factor"], factor_report["name"], strict=True))
        rows = latent_factors.ranked()
        ids = [latent_factors.ids[k] for k in rows]
        table = d.key("document_factors").to_python_identifier()
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
            share, mean = prevalence(latent_factors.oriented(scores)[:, rows])
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

    @dg.asset(
        key=d.key("html_report"),
        ins={
            "factor_report": dg.AssetIn(d.key("factor_report")),
            "factor_prevalence": dg.AssetIn(d.key("factor_prevalence")),
        },
        kinds={"html"},
        group_name=d.name,
        code_version=versions["html_report"],
    )
    def html_report(
        factor_report: pd.DataFrame, factor_prevalence: pd.DataFrame, storage: Storage
    ) -> dg.MaterializeResult:
        """One self-contained HTML page: the goal, the themes, and a card per factor (name, sentence, top
        properties, the documents behind it, its prevalence over the batches)."""
        location = storage.save_page(
            f"{d.name}_report", html.render(d.name, d.goal, factor_report, factor_prevalence)
        )
        link = dg.MetadataValue.path(location) if "://" not in location else dg.MetadataValue.url(location)
        return dg.MaterializeResult(
            metadata={"report": link, "factors": int(factor_report["factor"].nunique())}
        )

    return [factor_prevalence, html_report]
