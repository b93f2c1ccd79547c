"""The MLflow pyfunc: one predict call gives the class, its label and 3 probabilities.

It serves the registered model with the runtime `LUNGWATCH_MODEL_SERVER_RUNTIME` names: the
ONNX graph compiled at training (onnxruntime, one thread: microseconds a row) or the
scikit-learn pipeline it was compiled from. Both are artifacts of the same model version,
and training refuses a version whose two answers differ.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from contract.features import FEATURE_NAMES, LABELS
from contract.settings import ModelServerSettings

log = logging.getLogger("model.pyfunc")

PIPELINE_ARTIFACT = "pipeline"
ONNX_ARTIFACT = "onnx"


class RiskModel(PythonModel):
    """Wraps the compiled graph (`onnx` artifact) or the fitted scikit-learn Pipeline
    (`pipeline` artifact)."""

    runtime = "sklearn"

    def load_context(self, context: Any) -> None:
        wanted = ModelServerSettings().runtime
        onnx_path = context.artifacts.get(ONNX_ARTIFACT)
        if wanted == "onnx" and onnx_path:
            self._load_onnx(onnx_path)
            return
        if wanted == "onnx":
            log.warning("this model version has no ONNX artifact: serving scikit-learn")
        import joblib

        self.pipeline = joblib.load(context.artifacts[PIPELINE_ARTIFACT])
        self.runtime = "sklearn"

    def _load_onnx(self, path: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: a request is a few rows; thread hand-offs would cost more than the
        # maths, and the server's other work (HTTP, telemetry) needs the other core.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        graph_input = self.session.get_inputs()[0]
        self._input_name = graph_input.name
        self._input_dtype = np.int64 if "int64" in graph_input.type else np.float32
        outputs = [o.name for o in self.session.get_outputs()]
        self._proba_name = next((n for n in outputs if "prob" in n), outputs[-1])
        self.runtime = "onnx"

    def predict_proba(self, rows: Any) -> np.ndarray:
        """Probabilities (n, 3) of rows of the 23 features in contract order."""
        if self.runtime == "onnx":
            batch = np.asarray(rows, dtype=self._input_dtype).reshape(-1, len(FEATURE_NAMES))
            proba = self.session.run([self._proba_name], {self._input_name: batch})[0]
            return np.asarray(proba, dtype=np.float64)
        frame = (
            rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=FEATURE_NAMES)
        )
        result: np.ndarray = self.pipeline.predict_proba(frame[list(FEATURE_NAMES)])
        return result

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        frame = model_input[list(FEATURE_NAMES)]
        return to_output(self.predict_proba(frame.to_numpy() if self.runtime == "onnx" else frame))


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
