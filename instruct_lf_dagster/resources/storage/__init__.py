"""Where assets live: DuckDB and files locally, Parquet and files on S3 in production.

Tables are pandas DataFrames; partitioned ones carry a `batch` column, and writing a batch replaces exactly its
rows, so re-materialising is idempotent. Artefacts (vocabulary, linker, Linear CorEx) are saved by their own
`save` methods into a folder with a small manifest: no pickle anywhere. Tables and artefacts are addressed by
asset key (`Storage.table_name` is the one naming rule) or, for older callers, by their stored name. A full disk
or a refused permission while writing is a `StorageWriteError` naming what was written and where.
"""

from instruct_lf_dagster.resources.storage.artefacts import dump_artefact, restore_artefact
from instruct_lf_dagster.resources.storage.base import BATCH, Portable, Storage, TableRef
from instruct_lf_dagster.resources.storage.errors import StorageWriteError
from instruct_lf_dagster.resources.storage.io_manager import StorageIOManager
from instruct_lf_dagster.resources.storage.local import LocalStorage
from instruct_lf_dagster.resources.storage.s3 import S3ResponseCache, S3Storage

__all__ = [
    "BATCH",
    "LocalStorage",
    "Portable",
    "S3ResponseCache",
    "S3Storage",
    "Storage",
    "StorageIOManager",
    "StorageWriteError",
    "TableRef",
    "dump_artefact",
    "restore_artefact",
]
