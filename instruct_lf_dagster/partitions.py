"""Partitions: each document file in the inbox is one batch; `documents` is shared by every discovery."""

import dagster as dg

batches = dg.DynamicPartitionsDefinition(name="batches")

# A backfill of many batches runs as one run: the per-batch assets handle every batch of the run at once.
single_run = dg.BackfillPolicy.single_run()

DOCUMENTS = dg.AssetKey("documents")
