"""The project's Dagster components: `Discovery`, declared in `defs/<name>/defs.yaml`."""

from instruct_lf_dagster.components.discovery import Discovery

__all__ = ["Discovery"]
