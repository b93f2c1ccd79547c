"""The BentoML services the benchmark compares with: the registered forest, ONNX or scikit-learn.

Runs only inside the bench's own BentoML venv (bench/bentoml_env.py), never in the project's:
the harness copies this file into its work directory and starts
`bentoml serve bentoml_service:OnnxForest` (or `:SklearnForest`) there. The model files come
from the registered model's artifacts, named by BENCH_ONNX_PATH / BENCH_PIPELINE_PATH (and
BENCH_CODE_PATH, the model's own code that the pickled pipeline imports).

Written the way a BentoML 1.4 user would write it: one synchronous batchable API over a
2-D array (one row per request, batched along axis 0 by BentoML's adaptive batching), one
worker, probabilities out.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import bentoml
import numpy as np

# Issue 11's configuration: adaptive batching on, batches of up to 32 rows, one worker.
# 60000 ms is BentoML's own default, written out so the report can quote what ran.
MAX_BATCH_SIZE = 32
MAX_LATENCY_MS = 60000

# onnxruntime's tensor element types as numpy dtypes (the graph decides, not this file).
ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def probabilities_output(outputs: list[Any]) -> tuple[str, bool]:
    """The output holding class probabilities, and whether it is a ZipMap (list of dicts).

    skl2onnx names and shapes it by its options: a float tensor [N, classes] with
    zipmap=False, a sequence of {class: probability} maps otherwise.
    """
    for out in outputs:
        if out.type in ("tensor(float)", "tensor(double)") and len(out.shape or ()) == 2:
            return out.name, False
    for out in outputs:
        if out.type.startswith("seq(map("):
            return out.name, True
    raise RuntimeError(f"no probability output among {[(o.name, o.type) for o in outputs]}")


@bentoml.service(workers=1)
class OnnxForest:
    """The same ONNX file Lungwatch serves, on onnxruntime with one thread."""

    def __init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ["BENCH_ONNX_PATH"], options, providers=["CPUExecutionProvider"]
        )
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        if graph_input.type not in ONNX_DTYPES:
            raise RuntimeError(f"unsupported ONNX input type {graph_input.type}")
        self.input_dtype = ONNX_DTYPES[graph_input.type]
        self.output_name, self.zipmap = probabilities_output(self.session.get_outputs())

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, features: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.asarray(features, dtype=self.input_dtype)}
        (proba,) = self.session.run([self.output_name], feed)
        if self.zipmap:
            return np.array([[row[k] for k in sorted(row)] for row in proba], dtype=np.float64)
        return np.asarray(proba, dtype=np.float64)


@bentoml.service(workers=1)
class SklearnForest:
    """The registered scikit-learn pipeline (joblib), as BentoML users serve it by default."""

    def __init__(self) -> None:
        import joblib

        # The model's own code, shipped in the registered model (MLflow's code_paths): the
        # pickled pipeline names its classes there, as a bento would ship them.
        if os.environ.get("BENCH_CODE_PATH"):
            sys.path.insert(0, os.environ["BENCH_CODE_PATH"])
        self.pipeline = joblib.load(os.environ["BENCH_PIPELINE_PATH"])
        # The pipeline was fitted on a named DataFrame; a plain array is what a BentoML user
        # sends, and the per-call warning about it would only fill the log.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.pipeline.predict_proba(features), dtype=np.float64)
