"""Benchmarks: each module prints a table and a final JSON line."""
