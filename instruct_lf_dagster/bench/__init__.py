"""Benchmarks: each module prints a table and a final JSON line."""

import json

from tabulate import tabulate


def report(table: list[tuple[str, str]], result: dict) -> dict:
    """Print `table` (name, value rows, aligned) and then `result` as the final JSON line; returns `result`."""
    # Values are formatted by the benchmark (units, digits): printed as given.
    print(tabulate(table, tablefmt="plain", disable_numparse=True))
    print(json.dumps(result))
    return result
