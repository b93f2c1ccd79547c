"""The registered model's files every system serves: the ONNX graph and the scikit-learn pipeline.

Found through MLflow the way Lungwatch finds them (the model URI, then the pyfunc flavor's
artifacts `onnx` and `pipeline`), so BentoML loads the very files Lungwatch loads.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.procs import TrainedModel

# Both systems must give the same class, and probabilities within the tolerance the
# ONNX conversion is held to at registration (issue 11).
PROBABILITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ModelFiles:
    root: Path  # the downloaded model directory (MLmodel beside artifacts/)
    onnx: Path
    pipeline: Path
    # The model's own code (MLflow code_paths): the pickled pipeline may name its classes
    # (e.g. a calibrator), so whoever unpickles it imports them from here, as MLflow does.
    code: Path | None = None


def artifact_paths(mlmodel: Mapping[str, Any], root: Path) -> dict[str, Path]:
    """The pyfunc flavor's artifacts (name -> local file) of a downloaded model."""
    declared = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    return {name: root / entry["path"] for name, entry in declared.items() if "path" in entry}


def code_path(mlmodel: Mapping[str, Any], root: Path) -> Path | None:
    """The directory of the model's code_paths in a downloaded model, when it has one."""
    name = mlmodel.get("flavors", {}).get("python_function", {}).get("code")
    return root / name if name and (root / name).is_dir() else None


def model_files(model: TrainedModel, dest: Path) -> ModelFiles:
    import mlflow
    import yaml

    mlflow.set_tracking_uri(model.tracking_uri)
    root = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=model.model_uri, dst_path=str(dest))
    )
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    paths = artifact_paths(mlmodel, root)
    missing = [name for name in ("onnx", "pipeline") if name not in paths]
    if missing:
        raise RuntimeError(
            f"{model.model_uri} has no {' or '.join(missing)} artifact (found: "
            f"{sorted(paths) or 'none'}); the benchmark serves the registered ONNX file and "
            "pipeline that model.train logs"
        )
    for path in paths.values():
        if not path.is_file():
            raise RuntimeError(f"artifact {path} was not downloaded")
    return ModelFiles(root, paths["onnx"], paths["pipeline"], code_path(mlmodel, root))


@dataclass(frozen=True)
class Answer:
    """One row's answer, whatever the system's response shape."""

    prediction: int
    probabilities: tuple[float, ...]


def normalize(kind: str, body: Any) -> Answer:
    """Class and probabilities out of a single-row response of each system."""
    if kind == "lungwatch":
        return Answer(int(body["prediction"]), tuple(body["prediction_probabilities"]))
    if kind == "mlflow":
        row = body["predictions"][0]
        columns = ("prob_low", "prob_medium", "prob_high")
        return Answer(int(row["prediction"]), tuple(float(row[c]) for c in columns))
    if kind == "bentoml":
        proba = tuple(float(p) for p in body[0])
        # the same rule as Lungwatch's: the class is the argmax of the probabilities
        return Answer(max(range(len(proba)), key=proba.__getitem__), proba)
    raise ValueError(f"unknown system kind {kind!r}")


def mismatch(answer: Answer, reference: Answer, tolerance: float = PROBABILITY_TOLERANCE) -> str:
    """Why answer differs from reference (empty when they agree)."""
    if len(answer.probabilities) != len(reference.probabilities):
        return f"{len(answer.probabilities)} probabilities, expected {len(reference.probabilities)}"
    if answer.prediction != reference.prediction:
        return f"class {answer.prediction}, expected {reference.prediction}"
    pairs = zip(answer.probabilities, reference.probabilities, strict=True)
    worst = max(abs(a - b) for a, b in pairs)
    if worst > tolerance:
        return f"probabilities differ by {worst:.2g} (> {tolerance:g})"
    return ""


def reference_answer(files: ModelFiles, features: Sequence[int]) -> Answer:
    """The registered pipeline's own answer for one row, computed in this process."""
    import joblib
    import pandas as pd

    from contract.features import FEATURE_NAMES

    with code_on_path(files.code):
        pipeline = joblib.load(files.pipeline)
    frame = pd.DataFrame([list(features)], columns=list(FEATURE_NAMES))
    proba = [float(p) for p in pipeline.predict_proba(frame)[0]]
    return Answer(max(range(len(proba)), key=proba.__getitem__), tuple(proba))


@contextlib.contextmanager
def code_on_path(code: Path | None) -> Iterator[None]:
    if code is None:
        yield
        return
    sys.path.insert(0, str(code))
    try:
        yield
    finally:
        sys.path.remove(str(code))
