"""A model version the server may serve: what the registry says of it, and the gate it passes.

    python -m model.candidate MODEL_URI DEST_DIR   # one JSON object on stdout

The model server runs this as a process of its own when an alias moves (hot reload): the
registry lookup imports SQLAlchemy and friends (~50 MB), and the gate loads the scikit-learn
pipeline beside the ONNX graph; both stay out of the serving process, which then loads only
what it serves. The gate is training's (model.train.GATE.onnx_max_abs_diff, on the dataset
rows and 10,000 random valid rows): a version whose ONNX graph disagrees with its pipeline
is refused, as is one whose training run was refused or whose files do not load.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("model.candidate")

# How the reload ended for one role (model_reloads_total's `result`): the old version keeps
# serving for all three refusals.
REFUSED_LOAD = "refused_load"
REFUSED_GATE = "refused_gate"
REGISTRY_ERROR = "registry_error"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    run_id: str
    uri: str
    runtime: str = "unknown"  # what computes the predictions: onnx or sklearn


@dataclass(frozen=True)
class ResolvedModel:
    """What the registry says about the model to serve, and where its files now are."""

    info: ModelInfo
    path: str  # a local directory holding the model's MLflow files
    reference: dict[str, Any] | None  # the drift reference logged with it
    download_dir: str  # removed once the model is loaded (model.serve.load_resolved)


class Refused(Exception):
    """A version that must not be served; `result` is one of the three refusals above."""

    def __init__(self, result: str, message: str) -> None:
        super().__init__(message)
        self.result = result


def resolve_model_info(uri: str) -> ModelInfo:
    """Name/version/run of a `models:/name@alias` or `models:/name/version` URI."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/")
        client = MlflowClient()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = ref.split("/", 1)
            mv = client.get_model_version(name, version)
        return ModelInfo(name=name, version=str(mv.version), run_id=mv.run_id or "", uri=uri)
    return ModelInfo(name=uri, version="unregistered", run_id="", uri=uri)


def load_reference(info: ModelInfo) -> dict[str, Any] | None:
    """The drift reference logged by training in the model's run (None for other models)."""
    if not info.run_id:
        return None
    from mlflow.artifacts import load_dict

    from model.registry import REFERENCE_ARTIFACT

    try:
        reference: dict[str, Any] = load_dict(f"runs:/{info.run_id}/{REFERENCE_ARTIFACT}")
    except Exception:  # an older model without one still serves; drift is just not measured
        log.warning("model run %s has no drift reference", info.run_id)
        return None
    return reference


def gate_failures(model_dir: Path) -> list[str]:
    """Training's ONNX gate on a downloaded version: empty when its graph answers as its
    pipeline does (or it has no graph, and the pipeline serves)."""
    import joblib
    import numpy as np

    from model.onnx_export import random_valid_rows, verify
    from model.train import GATE, ONNX_RANDOM_ROWS

    artifacts = model_dir / "artifacts"
    graphs, pipelines = sorted(artifacts.glob("*.onnx")), sorted(artifacts.glob("*.joblib"))
    if not pipelines:
        raise Refused(REFUSED_LOAD, "the version has no scikit-learn pipeline artifact")
    if not graphs:
        return []
    try:
        pipeline = joblib.load(pipelines[0])
        onnx_model = graphs[0].read_bytes()
        rows = [random_valid_rows(ONNX_RANDOM_ROWS, seed=0)]
        try:
            from contract.features import FEATURE_NAMES
            from model.dataset import load_dataset

            rows.append(load_dataset()[list(FEATURE_NAMES)].to_numpy())
        except OSError:  # an image without the dataset: the random rows still gate it
            pass
        checks = [verify(pipeline, onnx_model, np.asarray(r)) for r in rows]
    except Exception as exc:  # a corrupt file: refused, never served
        raise Refused(
            REFUSED_LOAD, f"the version's files do not load ({type(exc).__name__})"
        ) from exc
    return [f for check in checks for f in check.failures("gate rows", GATE.onnx_max_abs_diff)]


def fetch(uri: str, dest: str) -> ResolvedModel:
    """Resolve, check the training run's verdict, download and gate one version."""
    import mlflow

    from model.registry import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        info = resolve_model_info(uri)
        tags = mlflow.tracking.MlflowClient().get_run(info.run_id).data.tags if info.run_id else {}
    except Exception as exc:
        raise Refused(REGISTRY_ERROR, f"the registry cannot say what {uri} is: {exc}") from exc
    if tags.get("gate") == "refused":
        raise Refused(REFUSED_GATE, f"version {info.version}'s training run was refused its gate")
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dest)
    except Exception as exc:
        raise Refused(REFUSED_LOAD, f"version {info.version} cannot be downloaded: {exc}") from exc
    failures = gate_failures(Path(path))
    if failures:
        raise Refused(REFUSED_GATE, f"version {info.version}: " + "; ".join(failures))
    return ResolvedModel(info, path, load_reference(info), dest)


def main(argv: list[str]) -> int:
    uri, dest = argv
    try:
        resolved = fetch(uri, dest)
    except Refused as refused:
        print(json.dumps({"result": refused.result, "error": str(refused)}))
        return 1
    print(json.dumps({**asdict(resolved), "result": "ok"}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(main(sys.argv[1:]))
