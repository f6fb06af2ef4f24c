"""Benchmarks: each module prints a table and a final JSON line."""

import json


def report(table: list[tuple[str, str]], result: dict) -> dict:
    """Print `table` (name, value rows, aligned) and then `result` as the final JSON line; returns `result`."""
    width = max(len(name) for name, _ in table)
    for name, value in table:
        print(f"{name:<{width}}  {value}")
    print(json.dumps(result))
    return result
