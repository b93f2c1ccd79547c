"""The dataset as a pandas frame for training and evaluation (the model package's own reader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.dataset import DATASET_PATH
from contract.features import FEATURES, LABELS, TARGET_COLUMN


def load_dataset(path: Path = DATASET_PATH) -> Any:  # pandas.DataFrame
    """The dataset with snake_case feature columns, `level` (0/1/2) and `patient_id`."""
    import pandas as pd

    raw = pd.read_csv(path)
    frame = raw[[f.column for f in FEATURES]].rename(columns={f.column: f.name for f in FEATURES})
    frame = frame.astype("int64")
    frame["level"] = raw[TARGET_COLUMN].map({label: i for i, label in enumerate(LABELS)})
    frame["patient_id"] = raw["Patient Id"]
    return frame
