"""The ONNX form of the registered pipeline, and the check that it answers as the pipeline does.

Graph contract (the serving side relies on it): one input "input", float32, shape [None, 23],
features in FEATURE_NAMES order (every feature is a small integer, exact in float32); outputs
"label" (int64 class, [None]) and "probabilities" (float32, [None, 3], classes 0, 1, 2), no ZipMap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.features import FEATURE_NAMES, FEATURES, N_FEATURES

INPUT_NAME = "input"
OUTPUT_NAMES = ("label", "probabilities")
# Pinned so a converter upgrade cannot silently change the operators the runtime must support.
TARGET_OPSET = {"": 21, "ai.onnx.ml": 3}


def to_onnx(pipeline: Any) -> bytes:
    """The fitted scikit-learn pipeline as a serialized ONNX model."""
    from skl2onnx import to_onnx as convert
    from skl2onnx.common.data_types import FloatTensorType

    model = convert(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        options={"zipmap": False},
        target_opset=TARGET_OPSET,
    )
    outputs = tuple(o.name for o in model.graph.output)
    if outputs != OUTPUT_NAMES:
        raise RuntimeError(f"converted graph has outputs {outputs}, expected {OUTPUT_NAMES}")
    return bytes(model.SerializeToString())


def session(onnx_model: bytes) -> Any:
    """An onnxruntime session on one thread: a single-row forest takes microseconds, and the
    server's concurrency comes from requests, not from splitting one of them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


def predict(onnx_session: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class per row, probabilities per row) from the ONNX model."""
    label, probabilities = onnx_session.run(
        list(OUTPUT_NAMES), {INPUT_NAME: np.asarray(rows, dtype=np.float32)}
    )
    return np.asarray(label), np.asarray(probabilities)


def random_valid_rows(n: int, seed: int) -> np.ndarray:
    """n rows of integers drawn uniformly from every feature's accepted range (what the
    gateway lets through), most of them unlike any training profile."""
    rng = np.random.default_rng(seed)
    columns = [rng.integers(f.minimum, f.maximum + 1, size=n) for f in FEATURES]
    return np.column_stack(columns).astype(np.int64)


@dataclass(frozen=True)
class Verification:
    """How the ONNX model's answers compare with the pipeline's on some rows."""

    rows: int
    max_abs_diff: float  # largest |p_onnx - p_sklearn| over every row and class
    class_mismatches: int  # rows where ONNX's label or argmax differs from the pipeline's class
    min_probability: float  # of the ONNX probabilities (what is served)
    max_probability: float

    def failures(self, what: str, tolerance: float) -> list[str]:
        found = []
        if not self.max_abs_diff <= tolerance:  # written so that NaN fails too
            found.append(
                f"ONNX probabilities differ by up to {self.max_abs_diff:.2e} (> {tolerance:g})"
                f" on {what}"
            )
        if self.class_mismatches:
            found.append(
                f"ONNX class differs on {self.class_mismatches} of {self.rows} rows of {what}"
            )
        return found


def verify(pipeline: Any, onnx_model: bytes, rows: np.ndarray) -> Verification:
    """Score `rows` (ints, FEATURE_NAMES order) with both and compare."""
    import pandas as pd

    rows = np.asarray(rows)
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURE_NAMES)))
    label, probabilities = predict(session(onnx_model), rows)
    classes = expected.argmax(axis=1)
    mismatches = (label != classes) | (probabilities.argmax(axis=1) != classes)
    return Verification(
        rows=len(rows),
        max_abs_diff=float(np.abs(probabilities.astype(np.float64) - expected).max()),
        class_mismatches=int(mismatches.sum()),
        min_probability=float(probabilities.min()),
        max_probability=float(probabilities.max()),
    )
