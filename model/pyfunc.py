"""The MLflow pyfunc wrapper: one predict call gives the class, its label and 3 probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from contract.features import FEATURE_NAMES, LABELS


class RiskModel(PythonModel):
    """Wraps the fitted scikit-learn Pipeline (loaded from the `pipeline` artifact)."""

    def load_context(self, context: Any) -> None:
        import joblib

        self.pipeline = joblib.load(context.artifacts["pipeline"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        frame = model_input[list(FEATURE_NAMES)]
        proba = self.pipeline.predict_proba(frame)
        return to_output(proba)


def to_output(proba: np.ndarray) -> pd.DataFrame:
    """Class = argmax of the probabilities, so class and confidence never disagree."""
    classes = proba.argmax(axis=1)
    return pd.DataFrame(
        {
            "prediction": classes.astype("int64"),
            "label": [LABELS[c] for c in classes],
            "prob_low": proba[:, 0],
            "prob_medium": proba[:, 1],
            "prob_high": proba[:, 2],
        }
    )
