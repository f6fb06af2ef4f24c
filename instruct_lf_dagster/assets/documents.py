"""Documents: each inbox file (a batch) read into rows of text, with bad input reported, never silently lost."""

import warnings

import dagster as dg
import pandas as pd
from pydantic import Field

from instruct_lf_dagster.core.records import RecordsError, read_records
from instruct_lf_dagster.partitions import batches, refuse_narrowed_backfill, single_run
from instruct_lf_dagster.resources.inbox import BatchFileError, Inbox


class DocumentsConfig(dg.Config):
    text_column: str = Field(default="text", description="column (or JSON key) holding the document text")
    id_column: str = Field(default="id", description="optional id column; row numbers when absent")
    max_chars: int = Field(
        default=100_000, description="longer documents are clipped to this many characters"
    )


class BatchError(ValueError):
    """A batch file that cannot be read; the message names the file and the problem."""


def _rows(name: str, data: bytes) -> tuple[pd.DataFrame, int]:
    """The file's rows, and how many JSON lines could not be decoded (skipped, not fatal)."""
    bad: list[tuple[int, str]] = []
    try:
        frame = read_records(name, data, on_bad_line=lambda number, reason: bad.append((number, reason)))
    except RecordsError as exc:
        raise BatchError(str(exc)) from exc
    if frame.empty and bad:  # nothing but bad lines: say what is wrong with the first, not "no column"
        number, reason = bad[0]
        raise BatchError(f"{name}: line {number} is {reason}; no line of the file could be read")
    return frame, len(bad)


def read_batch(batch: str, name: str, data: bytes, config: DocumentsConfig) -> tuple[pd.DataFrame, dict]:
    """Rows (batch, document_id, text) of one file, and counts of what was skipped or clipped."""
    if not data.strip():
        raise BatchError(f"{name}: the file is empty")
    frame, bad = _rows(name, data)
    if config.text_column not in frame.columns:
        raise BatchError(
            f"{name}: no {config.text_column!r} column (found: {', '.join(map(str, frame.columns)) or 'none'})"
        )
    text = frame[config.text_column].fillna("").astype(str)
    ids = (
        frame[config.id_column].astype(str) if config.id_column in frame.columns else frame.index.astype(str)
    )
    rows = pd.DataFrame({"batch": batch, "document_id": ids.to_numpy(), "text": text.to_numpy()})
    report = {
        "undecodable_rows": bad,
        "replaced_characters": int(rows["text"].str.count("\ufffd").sum()),
        "empty_skipped": int((rows["text"].str.strip() == "").sum()),
        "clipped": int((rows["text"].str.len() > config.max_chars).sum()),
    }
    rows = rows[rows["text"].str.strip() != ""]
    report["duplicate_ids_skipped"] = int(rows["document_id"].duplicated().sum())
    rows = rows.drop_duplicates("document_id", keep="first")
    rows["text"] = rows["text"].str.slice(0, config.max_chars)
    if rows.empty:
        raise BatchError(f"{name}: no document has any text in column {config.text_column!r}")
    return rows.reset_index(drop=True), report


with warnings.catch_warnings():
    # `backfill_policy` is beta in Dagster: a warning in every process that imports this module (each run, each
    # step), not one for users. The discoveries' assets are built under the same filter (`definitions.declared`).
    warnings.simplefilter("ignore", dg.BetaWarning)
    _documents_asset = dg.asset(
        partitions_def=batches,
        backfill_policy=single_run,
        group_name="inbox",
        pool="duckdb",
        kinds={"duckdb"},
    )


@_documents_asset
def documents(context: dg.AssetExecutionContext, config: DocumentsConfig, inbox: Inbox) -> pd.DataFrame:
    """The documents of each batch: one row per document with its text, read from the batch's inbox file.

    A file that cannot be used fails its batch with a message naming the file; in a run over several batches
    the other batches go on and the bad one is listed in the metadata.
    """
    refuse_narrowed_backfill(context)
    frames, reports, failed = [], {}, {}
    for batch in context.partition_keys:
        try:
            name, data = inbox.read(batch)
            frame, report = read_batch(batch, name, data, config)
        except (BatchError, BatchFileError, FileNotFoundError) as exc:
            failed[batch] = str(exc)
            context.log.error(str(exc))
            continue
        frames.append(frame)
        reports[batch] = report
        context.log.info(f"{name}: {len(frame)} documents ({report})")
    if not frames:
        raise dg.Failure("no readable batch: " + "; ".join(failed.values()), metadata={"failed": failed})
    out = pd.concat(frames, ignore_index=True)
    skipped = {key: sum(r[key] for r in reports.values()) for key in next(iter(reports.values()))}
    context.add_output_metadata(
        {
            "documents": len(out),
            "mean_chars": float(out["text"].str.len().mean()),
            **skipped,
            "failed_batches": failed or "none",
            "preview": dg.MetadataValue.md(
                out[["batch", "document_id", "text"]].head(5).to_markdown(index=False)
            ),
        }
    )
    return out
