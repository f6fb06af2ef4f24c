"""Declared discoveries: one folder each, with a `defs.yaml` (`instruct-lf discovery new NAME` writes one)."""
