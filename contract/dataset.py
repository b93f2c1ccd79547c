"""The dataset file as labelled integer rows, read with the csv module (no pandas needed)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from contract.features import FEATURES, LABELS, TARGET_COLUMN

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET_PATH = REPO_ROOT / "data" / "cancer_patient_data_sets.csv"


@dataclass(frozen=True)
class DatasetRow:
    features: tuple[int, ...]  # in contract.features.FEATURES order
    level: int  # 0 Low, 1 Medium, 2 High
    patient_id: str = ""


def read_rows(path: Path = DATASET_PATH) -> list[DatasetRow]:
    """Every row of the dataset file, features in contract order, Level encoded 0/1/2."""
    classes = {label: index for index, label in enumerate(LABELS)}
    with path.open(newline="") as handle:
        return [
            DatasetRow(
                features=tuple(int(record[f.column]) for f in FEATURES),
                level=classes[record[TARGET_COLUMN]],
                patient_id=record.get("Patient Id", ""),
            )
            for record in csv.DictReader(handle)
        ]
