"""An MLflow registry of a test's own: two trained versions, broken versions built from their
files, aliases moved as an operator would, and the model server's /model and /metrics read."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from contract.settings import REGISTERED_MODEL_NAME
from devtools import procs

NAME = REGISTERED_MODEL_NAME
# Valid YAML that is no MLmodel: the gate (which reads only the artifacts) passes it, and
# loading it as a pyfunc fails in the model server itself.
GARBAGE_MLMODEL = "flavors: [this is not, an MLmodel]\nrun_id: 7\n"


@dataclass(frozen=True)
class Registry:
    """A sqlite tracking store under `workdir` (artifacts in the same folder, absolute paths
    in the db, so a copy of the db file is a registry of its own with the same versions)."""

    tracking_uri: str
    workdir: Path

    @property
    def db(self) -> Path:
        return Path(self.tracking_uri.removeprefix("sqlite:///"))

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def aliases(self) -> dict[str, str]:
        model = self.client().get_registered_model(NAME)
        return {alias: str(version) for alias, version in model.aliases.items()}

    def set_alias(self, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(NAME, alias, version)

    def delete_alias(self, alias: str) -> None:
        if alias in self.aliases():
            self.client().delete_registered_model_alias(NAME, alias)

    def copy(self, directory: Path) -> Registry:
        """The same versions and aliases in another db file: moving its aliases leaves this
        registry's alone."""
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.db, directory / self.db.name)
        return Registry(f"sqlite:///{directory / self.db.name}", directory)

    def download(self, version: str, dest: Path) -> Path:
        import mlflow.artifacts

        client = self.client()
        source = client.get_model_version_download_uri(NAME, version)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dest), tracking_uri=self.tracking_uri
            )
        )

    def register_files(self, model_dir: Path, what: str) -> str:
        """A new version of `model_dir`'s files, logged to a new run tagged gate=passed (as
        training tags the versions it registers): only the model server's own checks can
        tell it is broken."""
        client = self.client()
        first = client.get_model_version(NAME, "1")
        experiment = client.get_run(first.run_id).info.experiment_id
        run_id: str = client.create_run(
            experiment, tags={"gate": "passed", "lungwatch.test": what}
        ).info.run_id
        client.log_artifacts(run_id, str(model_dir), "model")
        client.set_terminated(run_id)
        version = client.create_model_version(NAME, source=f"runs:/{run_id}/model", run_id=run_id)
        return str(version.version)

    def cli(self, module: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m model.<module>` (promote, rollback) against this registry."""
        return subprocess.run(
            [procs.PYTHON, "-m", f"model.{module}", *args],
            env=procs.base_env(MLFLOW_TRACKING_URI=self.tracking_uri),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )


@dataclass(frozen=True)
class BrokenVersions:
    corrupt_onnx: str  # model.onnx overwritten with random bytes
    garbage_mlmodel: str  # the MLmodel file is not one
    mismatched_onnx: str  # version 1's pipeline beside another forest's ONNX graph


def register_broken_versions(registry: Registry, scratch: Path) -> BrokenVersions:
    """Three versions built from version 1's files (and version 2's graph), each refused by a
    different check of the model server."""
    good = registry.download("1", scratch / "v1")
    other = registry.download("2", scratch / "v2")

    def variant(name: str) -> Path:
        target = scratch / name
        shutil.copytree(good, target)
        return target

    corrupt = variant("corrupt-onnx")
    onnx = corrupt / "artifacts" / "model.onnx"
    onnx.write_bytes(random.Random(23).randbytes(onnx.stat().st_size))
    garbage = variant("garbage-mlmodel")
    (garbage / "MLmodel").write_text(GARBAGE_MLMODEL)
    mismatched = variant("mismatched-onnx")
    shutil.copy(other / "artifacts" / "model.onnx", mismatched / "artifacts" / "model.onnx")
    return BrokenVersions(
        corrupt_onnx=registry.register_files(corrupt, "corrupt onnx"),
        garbage_mlmodel=registry.register_files(garbage, "garbage MLmodel"),
        mismatched_onnx=registry.register_files(mismatched, "onnx of another forest"),
    )


def served(model_server_url: str) -> dict[str, Any]:
    """The model server's /model: the champion's fields and `challenger` (or None)."""
    response = httpx.get(f"{model_server_url}/model", timeout=5)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def served_versions(model_server_url: str) -> tuple[str, str | None]:
    """(champion version, challenger version or None), from /model."""
    body = served(model_server_url)
    challenger = body.get("challenger")
    return str(body["version"]), None if challenger is None else str(challenger["version"])


def metric_value(metrics_text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named `sample` whose labels include `labels` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for found in family.samples:
            if found.name == sample and labels.items() <= found.labels.items():
                total += found.value
    return total


def metric_series(metrics_text: str, sample: str) -> list[dict[str, str]]:
    """The label sets of every sample named `sample`."""
    return [
        dict(found.labels)
        for family in text_string_to_metric_families(metrics_text)
        for found in family.samples
        if found.name == sample
    ]


def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", timeout=5)
    response.raise_for_status()
    return response.text
