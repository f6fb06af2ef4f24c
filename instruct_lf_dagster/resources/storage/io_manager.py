"""The IO manager every asset goes through: DataFrames become tables, everything else an artefact."""

import dagster as dg
import pandas as pd

from instruct_lf_dagster.resources.storage.base import Storage


class StorageIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames as tables and everything else as artefacts, in the environment's `Storage`, under the
    name `Storage.table_name` gives the asset's key."""

    storage: Storage

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        key = context.asset_key
        if isinstance(obj, pd.DataFrame):
            batches = context.asset_partition_keys if context.has_asset_partitions else None
            self.storage.write_table(key, obj, batches)
            context.add_output_metadata({"rows": len(obj), "stored_in": self.storage.describe()})
        else:
            self.storage.save_artefact(key, obj)
            context.add_output_metadata({"stored_in": self.storage.describe()})

    def load_input(self, context: dg.InputContext) -> object:
        key = context.asset_key
        if context.dagster_type.typing_type is pd.DataFrame:
            batches = context.asset_partition_keys if context.has_asset_partitions else None
            return self.storage.read_table(key, batches)
        obj = self.storage.load_artefact(key)
        if obj is None:
            raise dg.Failure(
                f"{self.storage.table_name(key)} has not been materialised yet: run the discovery job first"
            )
        return obj
