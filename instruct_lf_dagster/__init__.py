"""Goal-conditioned latent factor discovery (Instruct-LF) as a Dagster data platform."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazily: `import instruct_lf_dagster` (e.g. for `core`) should not load Dagster.
    if name in ("load_discovery", "FittedDiscovery"):
        from instruct_lf_dagster import fitted

        return getattr(fitted, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
