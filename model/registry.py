"""Where training writes and serving reads: the MLflow tracking store and artifact names."""

from __future__ import annotations

import os

from contract.dataset import REPO_ROOT

DEFAULT_TRACKING_URI = f"sqlite:///{REPO_ROOT / 'mlruns.db'}"
EXPERIMENT_NAME = "lungwatch-risk"
REFERENCE_ARTIFACT = "reference_distribution.json"  # in the run that produced the model


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the sqlite store at the repo root (`make run`'s default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
