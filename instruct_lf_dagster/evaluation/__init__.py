"""The paper's downstream evaluations, with baselines, Dagster-free (built on `instruct_lf_dagster.core`)."""
