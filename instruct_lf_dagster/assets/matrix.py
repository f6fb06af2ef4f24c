"""The compatibility matrix as stored: one row per batch, its float32 matrix as bytes, read back bit for bit."""

import dagster as dg
import numpy as np
import pandas as pd

from instruct_lf_dagster.resources.storage import Storage


def to_row(batch: str, document_ids: list[str], matrix: np.ndarray) -> pd.DataFrame:
    """A batch's documents x properties matrix as one table row (little-endian float32 bytes and its shape)."""
    matrix = np.ascontiguousarray(matrix, dtype="<f4")
    return pd.DataFrame(
        {
            "batch": [batch],
            "document_ids": [list(document_ids)],
            "rows": [matrix.shape[0]],
            "columns": [matrix.shape[1]],
            "matrix": [matrix.tobytes()],
        }
    )


def read(storage: Storage, table: str, batch: str, width: int) -> tuple[list[str], np.ndarray] | None:
    """The document ids and matrix of one batch (None when it has none); another width is a stale vocabulary."""
    frame = storage.read_table(table, [batch])
    if frame.empty:
        return None
    row = frame.iloc[0]
    if row["columns"] != width:
        raise dg.Failure(
            f"compatibility of batch {batch!r} has {row['columns']} columns, the vocabulary {width}: it was computed "
            "with an older vocabulary; re-materialise compatibility for every batch (the discovery job does)"
        )
    matrix = np.frombuffer(row["matrix"], dtype="<f4").reshape(int(row["rows"]), int(row["columns"]))
    return list(row["document_ids"]), matrix
