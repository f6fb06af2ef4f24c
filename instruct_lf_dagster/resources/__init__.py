"""Dagster resources: LLM, compute, storage and inbox, chosen per environment in definitions.py."""
