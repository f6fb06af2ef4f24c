"""Goal-conditioned latent factor discovery (Instruct-LF) as a Dagster data platform."""

import os

# litellm must never reach the network for its price table; set before litellm is imported anywhere.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
