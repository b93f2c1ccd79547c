"""Moves the registry's serving aliases for `model.promote` and `model.rollback`.

@champion is what the model server serves, @challenger what it shadows or canaries, and
@previous-champion the champion the last move replaced (what a rollback returns to). A version
may become champion only if it is READY, its run is tagged gate=passed and its model holds the
`onnx` artifact the model server runs. Refusals exit with status 2 and one line on stderr,
leaving every alias as it was; success prints one JSON line of the aliases after the move.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contract.settings import REGISTERED_MODEL_NAME, SERVING_ALIAS
from model.pyfunc import ONNX_ARTIFACT
from model.registry import tracking_uri

CHALLENGER_ALIAS = "challenger"
PREVIOUS_ALIAS = "previous-champion"
# Model-version tags of the version a move made champion (the latest move wins).
PROMOTED_AT_TAG = "lungwatch.promoted_at"
REPLACED_TAG = "lungwatch.replaced_version"  # "none" when there was no champion
PROMOTED_WITH_TAG = "lungwatch.promoted_with"  # model.promote or model.rollback
REFUSED_STATUS = 2
DEFAULT_NAME = REGISTERED_MODEL_NAME


class Refused(Exception):
    """Why no alias moved, in one line."""


@dataclass(frozen=True)
class Registry:
    """One registered model and its aliases (alias -> version), read at one moment."""

    client: Any
    name: str
    aliases: dict[str, str]

    @classmethod
    def open(cls, name: str) -> Registry:
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri())
        client = MlflowClient()
        with _not_found(f"no registered model {name!r} in {_where()}"):
            model = client.get_registered_model(name)
        # The aliases come from this one read: a missing alias is then simply absent, where
        # get_model_version_by_alias raises INVALID_PARAMETER_VALUE (sqlite store, MLflow
        # 3.17), which no code tells apart from a real invalid argument.
        return cls(client, name, {alias: str(v) for alias, v in model.aliases.items()})

    def servable(self, version: str) -> Any:
        """The model version, once it is shown fit to serve; else Refused."""
        with _not_found(f"{self.name} has no version {version}"):
            mv = self.client.get_model_version(self.name, version)
        what = f"{self.name} version {version}"
        if mv.status != "READY":
            raise Refused(f"{what} is {mv.status}, not READY")
        if not mv.run_id:
            raise Refused(f"{what} has no run, so no gate result")
        with _not_found(f"{what}: its run {mv.run_id} does not exist"):
            run = self.client.get_run(mv.run_id)
        gate = run.data.tags.get("gate")
        if gate != "passed":
            tagged = f"is tagged gate={gate}" if gate else "has no gate tag"
            raise Refused(f"{what} did not pass its gate: its run {mv.run_id} {tagged}")
        _check_onnx(self.name, version, what)
        return mv

    def move_champion(self, target: str, via: str) -> dict[str, Any]:
        """@champion to target, @previous-champion to the champion it replaces (removed when
        there was none, so a rollback cannot return to an older, unrelated version)."""
        old = self.aliases.get(SERVING_ALIAS)
        if old == target:
            return self.state(changed=False)
        client, name = self.client, self.name
        # The model server polls @champion: the record of the old one is written first, so
        # a failure between the two writes leaves the champion serving and rollback possible.
        if old is None:
            client.delete_registered_model_alias(name, PREVIOUS_ALIAS)
            self.aliases.pop(PREVIOUS_ALIAS, None)
        else:
            client.set_registered_model_alias(name, PREVIOUS_ALIAS, old)
            self.aliases[PREVIOUS_ALIAS] = old
        client.set_registered_model_alias(name, SERVING_ALIAS, target)
        self.aliases[SERVING_ALIAS] = target
        for key, value in (
            (PROMOTED_AT_TAG, datetime.now(UTC).isoformat(timespec="seconds")),
            (REPLACED_TAG, old or "none"),
            (PROMOTED_WITH_TAG, via),
        ):
            client.set_model_version_tag(name, target, key, value)
        return self.state(changed=True)

    def drop_alias(self, alias: str) -> None:
        self.client.delete_registered_model_alias(self.name, alias)
        self.aliases.pop(alias, None)

    def state(self, changed: bool) -> dict[str, Any]:
        return {
            "champion": self.aliases.get(SERVING_ALIAS),
            "previous_champion": self.aliases.get(PREVIOUS_ALIAS),
            "challenger": self.aliases.get(CHALLENGER_ALIAS),
            "changed": changed,
            "name": self.name,
        }


def promote(name: str, version: str | None, keep_challenger: bool) -> dict[str, Any]:
    """@champion to `version` (default: @challenger's). @challenger is removed when it points
    at the new champion, unless keep_challenger: the model server would shadow the champion
    with itself. A @challenger on another version (promote --version) stays."""
    registry = Registry.open(name)
    if version is None:
        version = registry.aliases.get(CHALLENGER_ALIAS)
        if version is None:
            raise Refused(f"{name} has no @{CHALLENGER_ALIAS}; name a version with --version N")
    registry.servable(version)
    result = registry.move_champion(version, via="model.promote")
    if not keep_challenger and registry.aliases.get(CHALLENGER_ALIAS) == version:
        registry.drop_alias(CHALLENGER_ALIAS)
        return registry.state(changed=True)
    return result


def rollback(name: str) -> dict[str, Any]:
    """@champion back to @previous-champion's version, and @previous-champion to the version
    rolled back from: a second rollback undoes the first. @challenger is left as it is."""
    registry = Registry.open(name)
    version = registry.aliases.get(PREVIOUS_ALIAS)
    if version is None:
        raise Refused(f"{name} has no @{PREVIOUS_ALIAS}: nothing to roll back to")
    registry.servable(version)
    return registry.move_champion(version, via="model.rollback")


def run_cli(command: str, action: Callable[[], dict[str, Any]]) -> int:
    """Run a move: its JSON line on stdout (0), or one line on stderr (2 refused, 1 when the
    registry failed, after which `aliases` shows what was written)."""
    from mlflow.exceptions import MlflowException

    # A new sqlite store's schema migration logs INFO lines that would bury the one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        result = action()
    except Refused as refused:
        print(f"{command} refused: {refused}", file=sys.stderr)
        return REFUSED_STATUS
    except MlflowException as exc:
        print(f"{command} failed: registry error: {_one_line(exc.message)}", file=sys.stderr)
        return 1
    if not result["changed"]:
        print(
            f"{command}: nothing to do: {result['name']}@{SERVING_ALIAS} already is version "
            f"{result['champion']}",
            file=sys.stderr,
        )
    print(json.dumps(result))
    return 0


def version_argument(value: str) -> str:
    """argparse type of --version: a registry version number, as MLflow spells it."""
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a version number: {value!r}")
    return str(int(value))


def _check_onnx(name: str, version: str, what: str) -> None:
    """The version's MLmodel names an `onnx` artifact and its file is there (the model server
    refuses a version without it only after downloading it)."""
    import mlflow
    from mlflow.models import Model

    uri = f"models:/{name}/{version}"
    try:
        flavor = Model.load(uri).flavors.get("python_function", {})
    except Exception as exc:  # no MLmodel where the version points, whatever the store says
        raise Refused(f"{what} has no readable MLflow model ({type(exc).__name__})") from None
    declared = (flavor.get("artifacts") or {}).get(ONNX_ARTIFACT, {}).get("path")
    if not declared:
        raise Refused(f"{what} has no `{ONNX_ARTIFACT}` artifact in its model")
    folder, _, file = declared.rpartition("/")
    try:
        listed = mlflow.artifacts.list_artifacts(artifact_uri=f"{uri}/{folder}" if folder else uri)
    except Exception:  # an unlistable folder holds no file the model server could download
        listed = []
    if not any(entry.path.rsplit("/", 1)[-1] == file and not entry.is_dir for entry in listed):
        raise Refused(
            f"{what}: its model names the `{ONNX_ARTIFACT}` artifact {declared}, which is missing"
        )


@contextmanager
def _not_found(message: str) -> Iterator[None]:
    """Turns MLflow's RESOURCE_DOES_NOT_EXIST into Refused(message)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise Refused(message) from None
        raise


def _where() -> str:
    """The tracking URI without any user:password@ it may carry."""
    return re.sub(r"//[^/@]*@", "//", tracking_uri())


def _one_line(text: str) -> str:
    return " ".join(text.split())
