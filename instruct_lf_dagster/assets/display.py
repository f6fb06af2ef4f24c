"""What the Dagster UI shows of factors: Markdown tables and PNG plots as metadata."""

import base64
import io

import dagster as dg
import numpy as np


def png(figure) -> dg.MetadataValue:
    """A matplotlib figure as an image in Markdown metadata (closed afterwards)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return dg.MetadataValue.md(
        f"![plot](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    return plt


def heatmap(
    mis: np.ndarray,
    factors: list[int],
    properties: list[int],
    names: list[str],
    labels: list[str] | None = None,
) -> dg.MetadataValue:
    """Mutual information of the top factors (rows, `labels` or "factor k") with their top properties (columns)."""
    plt = _pyplot()
    sub = mis[np.ix_(factors, properties)]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(properties)), max(3, 0.35 * len(factors))))
    image = ax.imshow(sub, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(factors)), labels or [f"factor {k}" for k in factors], fontsize=7)
    ax.set_xticks(range(len(properties)), [names[j][:30] for j in properties], rotation=90, fontsize=7)
    fig.colorbar(image, ax=ax, label="mutual information")
    return png(fig)


def prevalence(shares: dict[str, np.ndarray], labels: list[str]) -> dg.MetadataValue:
    """Share of each batch's documents whose strongest factor is each factor (grouped bars)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(labels)), 3.5))
    width = 0.8 / max(1, len(shares))
    for i, (batch, share) in enumerate(shares.items()):
        ax.bar(np.arange(len(labels)) + i * width, share, width, label=batch[:30])
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=90, fontsize=7)
    ax.set_ylabel("share of documents")
    ax.legend(fontsize=7)
    return png(fig)


def trend(batches: list[str], shares: np.ndarray, labels: list[str]) -> dg.MetadataValue:
    """Each factor's share of strong documents (columns of `shares`) over the batches, in arrival order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(batches)), 3.5))
    for j, label in enumerate(labels):
        ax.plot(range(len(batches)), shares[:, j], marker="o", markersize=3, label=label[:40])
    ax.set_xticks(range(len(batches)), batches, rotation=90, fontsize=7)
    ax.set_ylabel("share of documents where strong")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png(fig)
