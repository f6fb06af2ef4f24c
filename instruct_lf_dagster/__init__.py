"""Goal-conditioned latent factor discovery (Instruct-LF) as a Dagster data platform."""

__version__ = "0.1.0"
