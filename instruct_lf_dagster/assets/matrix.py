"""The compatibility matrix as stored: one row of floats per document, read back into one array."""

import dagster as dg
import numpy as np
import pandas as pd


def stack_compatibility(compatibility: pd.DataFrame, width: int) -> np.ndarray:
    """The documents x properties matrix from stored rows; rows of an older vocabulary are an error."""
    stale = sorted(set(compatibility.loc[compatibility["compatibility"].map(len) != width, "batch"]))
    if stale:
        raise dg.Failure(
            f"compatibility of batches {stale} was computed with an older vocabulary; "
            "re-materialise compatibility for every batch (the discovery job does) before fitting factors"
        )
    if compatibility.empty:
        return np.zeros((0, width), dtype=np.float32)
    return np.stack(compatibility["compatibility"].to_numpy()).astype(np.float32)
