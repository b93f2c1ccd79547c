"""`python -m model.promote` and `python -m model.rollback` as processes against a real sqlite
MLflow store: the aliases after each move, and every refusal leaving them as they were."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from contract.settings import REGISTERED_MODEL_NAME
from devtools import procs

NAME = REGISTERED_MODEL_NAME
# An MLmodel whose pyfunc flavour names no `onnx` artifact, and one naming a file not logged.
MLMODEL_WITHOUT_ONNX = "flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
MLMODEL_MISSING_ONNX = (
    MLMODEL_WITHOUT_ONNX + "    artifacts:\n      onnx:\n        path: artifacts/model.onnx\n"
)


@dataclass(frozen=True)
class Template:
    """A store trained once: version 1 (@champion) and 2 and 6 servable, 3 refused by its
    gate, 4 without an `onnx` artifact, 5 naming one that is missing."""

    db: Path
    refused_run_id: str


def client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    trained = procs.train_model(tmp_path_factory.mktemp("promote") / "mlflow", "--repeats", "2")
    assert trained.version == "1"
    mlflow = client(trained.tracking_uri)
    good = f"runs:/{trained.run_id}/model"
    experiment = mlflow.get_run(trained.run_id).info.experiment_id

    def version(source: str, run_id: str) -> str:
        return str(mlflow.create_model_version(NAME, source=source, run_id=run_id).version)

    def run_with_mlmodel(mlmodel: str) -> str:
        run_id: str = mlflow.create_run(experiment, tags={"gate": "passed"}).info.run_id
        mlflow.log_text(run_id, mlmodel, "model/MLmodel")
        return run_id

    assert version(good, trained.run_id) == "2"
    # The good model's files under a refused run: only the gate tells it apart.
    refused = mlflow.create_run(experiment, tags={"gate": "refused"}).info.run_id
    assert version(good, refused) == "3"
    for number, mlmodel in (("4", MLMODEL_WITHOUT_ONNX), ("5", MLMODEL_MISSING_ONNX)):
        run_id = run_with_mlmodel(mlmodel)
        assert version(f"runs:/{run_id}/model", run_id) == number
    assert version(good, trained.run_id) == "6"
    return Template(trained.workdir / "mlruns.db", refused)


@pytest.fixture
def store(template: Template, tmp_path: Path) -> str:
    """A copy of the template's registry for one test (artifacts stay in the template's
    folder, which nothing here writes)."""
    shutil.copy(template.db, tmp_path / "mlruns.db")
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def cli(store: str, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [procs.PYTHON, "-m", f"model.{module}", *args],
        env=procs.base_env(MLFLOW_TRACKING_URI=store),
        cwd=Path(store.removeprefix("sqlite:///")).parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def moved(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    result: dict[str, Any] = json.loads(lines[0])
    return result


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def aliases(store: str) -> dict[str, str]:
    model = client(store).get_registered_model(NAME)
    return {alias: str(version) for alias, version in model.aliases.items()}


def tags(store: str, version: str) -> dict[str, str]:
    found: dict[str, str] = client(store).get_model_version(NAME, version).tags
    return found


def test_promote_makes_the_challenger_champion_and_records_the_one_it_replaced(
    store: str,
) -> None:
    client(store).set_registered_model_alias(NAME, "challenger", "2")
    before = datetime.now().astimezone().replace(microsecond=0)

    result = moved(cli(store, "promote"))

    assert result == {
        "champion": "2",
        "previous_champion": "1",
        "challenger": None,
        "changed": True,
        "name": NAME,
    }
    assert aliases(store) == {"champion": "2", "previous-champion": "1"}
    recorded = tags(store, "2")
    assert recorded["lungwatch.replaced_version"] == "1"
    assert recorded["lungwatch.promoted_with"] == "model.promote"
    assert datetime.fromisoformat(recorded["lungwatch.promoted_at"]) >= before
    assert tags(store, "1") == {}


def test_keep_challenger_leaves_it_on_the_new_champion(store: str) -> None:
    client(store).set_registered_model_alias(NAME, "challenger", "2")
    result = moved(cli(store, "promote", "--keep-challenger"))
    assert (result["champion"], result["challenger"]) == ("2", "2")
    assert aliases(store) == {"champion": "2", "previous-champion": "1", "challenger": "2"}


def test_promote_of_a_named_version_leaves_a_challenger_on_another_one(store: str) -> None:
    client(store).set_registered_model_alias(NAME, "challenger", "6")
    result = moved(cli(store, "promote", "--version", "2"))
    assert (result["champion"], result["previous_champion"], result["challenger"]) == (
        "2",
        "1",
        "6",
    )
    assert aliases(store) == {"champion": "2", "previous-champion": "1", "challenger": "6"}


def test_promoting_the_champion_is_nothing_to_do(store: str) -> None:
    done = cli(store, "promote", "--version", "1")
    assert moved(done)["changed"] is False
    assert done.stderr.strip() == f"promote: nothing to do: {NAME}@champion already is version 1"
    assert aliases(store) == {"champion": "1"}
    assert tags(store, "1") == {}


def test_first_promotion_leaves_no_previous_champion(store: str) -> None:
    client(store).delete_registered_model_alias(NAME, "champion")
    result = moved(cli(store, "promote", "--version", "2"))
    assert (result["champion"], result["previous_champion"]) == ("2", None)
    assert aliases(store) == {"champion": "2"}
    assert tags(store, "2")["lungwatch.replaced_version"] == "none"


@pytest.mark.parametrize(
    ("args", "challenger", "message"),
    [
        ((), None, f"{NAME} has no @challenger; name a version with --version N"),
        (("--version", "99"), None, f"{NAME} has no version 99"),
        (
            ("--version", "3"),
            None,
            f"{NAME} version 3 did not pass its gate: its run {{refused}} is tagged gate=refused",
        ),
        (
            (),
            "3",
            f"{NAME} version 3 did not pass its gate: its run {{refused}} is tagged gate=refused",
        ),
        (("--version", "4"), None, f"{NAME} version 4 has no `onnx` artifact in its model"),
        (
            ("--version", "5"),
            None,
            f"{NAME} version 5: its model names the `onnx` artifact artifacts/model.onnx, "
            "which is missing",
        ),
        (("--name", "no-such-model"), None, "no registered model 'no-such-model' in {store}"),
    ],
    ids=[
        "no-challenger",
        "no-such-version",
        "gate-refused",
        "gate-refused-challenger",
        "no-onnx",
        "onnx-missing",
        "no-such-model",
    ],
)
def test_promote_refuses_and_moves_nothing(
    store: str,
    template: Template,
    args: tuple[str, ...],
    challenger: str | None,
    message: str,
) -> None:
    if challenger:
        client(store).set_registered_model_alias(NAME, "challenger", challenger)
    before = aliases(store)

    line = refusal(cli(store, "promote", *args))

    assert line == "promote refused: " + message.format(
        refused=template.refused_run_id, store=store
    )
    assert aliases(store) == before
    assert all(not tags(store, v) for v in ("1", "3", "4", "5"))


def test_rollback_returns_to_the_previous_champion_and_a_second_one_undoes_it(
    store: str,
) -> None:
    client(store).set_registered_model_alias(NAME, "challenger", "2")
    moved(cli(store, "promote"))

    first = moved(cli(store, "rollback"))
    assert (first["champion"], first["previous_champion"], first["changed"]) == ("1", "2", True)
    assert aliases(store) == {"champion": "1", "previous-champion": "2"}
    assert tags(store, "1")["lungwatch.replaced_version"] == "2"
    assert tags(store, "1")["lungwatch.promoted_with"] == "model.rollback"

    second = moved(cli(store, "rollback"))
    assert (second["champion"], second["previous_champion"]) == ("2", "1")
    assert aliases(store) == {"champion": "2", "previous-champion": "1"}
    assert tags(store, "2")["lungwatch.promoted_with"] == "model.rollback"


def test_rollback_leaves_the_challenger_alone(store: str) -> None:
    mlflow = client(store)
    mlflow.set_registered_model_alias(NAME, "previous-champion", "2")
    mlflow.set_registered_model_alias(NAME, "challenger", "6")
    result = moved(cli(store, "rollback"))
    assert (result["champion"], result["challenger"]) == ("2", "6")
    assert aliases(store) == {"champion": "2", "previous-champion": "1", "challenger": "6"}


@pytest.mark.parametrize(
    ("previous", "args", "message"),
    [
        (None, (), f"{NAME} has no @previous-champion: nothing to roll back to"),
        (
            "3",
            (),
            f"{NAME} version 3 did not pass its gate: its run {{refused}} is tagged gate=refused",
        ),
        (None, ("--name", "no-such-model"), "no registered model 'no-such-model' in {store}"),
    ],
    ids=["no-previous-champion", "gate-refused", "no-such-model"],
)
def test_rollback_refuses_and_moves_nothing(
    store: str, template: Template, previous: str | None, args: tuple[str, ...], message: str
) -> None:
    if previous:
        client(store).set_registered_model_alias(NAME, "previous-champion", previous)
    before = aliases(store)

    line = refusal(cli(store, "rollback", *args))

    assert line == "rollback refused: " + message.format(
        refused=template.refused_run_id, store=store
    )
    assert aliases(store) == before
