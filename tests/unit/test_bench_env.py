"""The bench's BentoML venv pins (read from uv.lock), the answer check, the system order."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from bench import bentoml_env
from bench.__main__ import FULL, QUICK, first_reference, plan_for, round_order
from bench.artifacts import Answer, artifact_paths, code_on_path, code_path, mismatch, normalize
from bench.systems import KINDS, SYSTEMS, counter_delta, request_body
from devtools.procs import REPO_ROOT

LOCK = """
version = 1
requires-python = ">=3.11"

[[package]]
name = "numpy"
version = "2.4.6"
resolution-markers = ["python_full_version < '3.12'"]

[[package]]
name = "numpy"
version = "2.5.5"
resolution-markers = ["python_full_version >= '3.12'"]

[[package]]
name = "joblib"
version = "1.6.0"
"""


def env(python: str) -> dict[str, str]:
    return {"python_full_version": python, "python_version": python.rsplit(".", 1)[0]}


def test_the_pin_whose_markers_hold_for_the_interpreter() -> None:
    names = ("numpy", "joblib")
    assert bentoml_env.locked_versions(LOCK, names, env("3.11.7")) == {
        "numpy": "2.4.6",
        "joblib": "1.6.0",
    }
    assert bentoml_env.locked_versions(LOCK, names, env("3.13.1"))["numpy"] == "2.5.5"


def test_a_package_the_lock_does_not_pin_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="pins no version of onnxruntime"):
        bentoml_env.locked_versions(LOCK, ("joblib", "onnxruntime"), env("3.11.7"))


def test_requirements_are_bentoml_plus_what_the_project_venv_runs() -> None:
    # the same versions uv sync installed for the project: the two never drift
    reqs = bentoml_env.requirements((REPO_ROOT / "uv.lock").read_text())
    assert reqs[0] == f"bentoml=={bentoml_env.BENTOML_VERSION}" == "bentoml==1.4.40"
    pins = dict(r.split("==") for r in reqs[1:])
    assert set(pins) == set(bentoml_env.LOCKED)
    assert pins == {name: version(name) for name in bentoml_env.LOCKED}


def test_a_changed_pin_gets_a_new_venv_and_a_stamp_decides_reuse(tmp_path: Path) -> None:
    reqs = ["bentoml==1.4.40", "numpy==2.4.6"]
    path = bentoml_env.venv_dir(reqs, "3.11", tmp_path)
    assert path == bentoml_env.venv_dir(list(reversed(reqs)), "3.11", tmp_path)
    assert path != bentoml_env.venv_dir(["bentoml==1.4.40", "numpy==2.4.7"], "3.11", tmp_path)
    assert path != bentoml_env.venv_dir(reqs, "3.12", tmp_path)
    assert path.parent == tmp_path and path.name.startswith("bentoml-1.4.40-")
    assert not bentoml_env.is_ready(path, reqs)
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "bentoml").touch()
    (path / bentoml_env.STAMP).write_text(json.dumps(sorted(reqs)))
    assert bentoml_env.is_ready(path, reqs)
    assert not bentoml_env.is_ready(path, [*reqs, "scipy==1.17.1"])


def test_the_venv_lives_where_git_ignores_it() -> None:
    assert bentoml_env.VENVS_DIR.is_relative_to(REPO_ROOT / "results" / "tmp")
    assert "results/tmp/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_artifacts_come_from_the_pyfunc_flavor(tmp_path: Path) -> None:
    mlmodel = {
        "flavors": {
            "python_function": {
                "artifacts": {
                    "pipeline": {"path": "artifacts/pipeline.joblib", "uri": "/tmp/x"},
                    "onnx": {"path": "artifacts/model.onnx", "uri": "/tmp/y"},
                }
            }
        }
    }
    assert artifact_paths(mlmodel, tmp_path) == {
        "pipeline": tmp_path / "artifacts/pipeline.joblib",
        "onnx": tmp_path / "artifacts/model.onnx",
    }
    assert artifact_paths({"flavors": {}}, tmp_path) == {}


def test_the_models_own_code_is_found_and_put_on_the_path_only_while_loading(
    tmp_path: Path,
) -> None:
    mlmodel = {"flavors": {"python_function": {"code": "code"}}}
    assert code_path(mlmodel, tmp_path) is None  # declared but not downloaded
    (tmp_path / "code").mkdir()
    assert code_path(mlmodel, tmp_path) == tmp_path / "code"
    assert code_path({"flavors": {"python_function": {}}}, tmp_path) is None
    before = list(sys.path)
    with code_on_path(tmp_path / "code"):
        assert sys.path[0] == str(tmp_path / "code")
    assert sys.path == before


def test_each_systems_answer_reads_as_class_and_probabilities() -> None:
    expected = Answer(0, (0.8, 0.2, 0.0))
    lungwatch = {"prediction": 0, "label": "Low", "prediction_probabilities": [0.8, 0.2, 0.0]}
    mlflow = {"predictions": [{"prediction": 0, "prob_low": 0.8, "prob_medium": 0.2,
                               "prob_high": 0.0}]}  # fmt: skip
    assert normalize("lungwatch", lungwatch) == expected
    assert normalize("mlflow", mlflow) == expected
    assert normalize("bentoml", [[0.8, 0.2, 0.0]]) == expected
    with pytest.raises(ValueError):
        normalize("torchserve", {})


def test_answers_match_within_the_conversion_tolerance() -> None:
    reference = Answer(0, (0.8053539532776196, 0.19464604672238014, 0.0))
    onnx = Answer(0, (0.8053537607192993, 0.19464604556560516, 0.0))  # float32 graph
    assert mismatch(onnx, reference) == ""
    assert "class 1" in mismatch(Answer(1, reference.probabilities), reference)
    assert "differ by 0.0001" in mismatch(Answer(0, (0.8052539, 0.1947461, 0.0)), reference)
    assert "2 probabilities" in mismatch(Answer(0, (0.8, 0.2)), reference)


def test_request_bodies_the_way_each_systems_users_send_one_row() -> None:
    row, columns = [33, 1], ["age", "gender"]
    assert json.loads(request_body("bentoml", row, columns)) == {"features": [[33, 1]]}
    assert json.loads(request_body("lungwatch", row, columns)) == {"features": [33, 1]}
    assert json.loads(request_body("mlflow", row, columns)) == {
        "dataframe_split": {"columns": columns, "data": [[33, 1]]}
    }
    assert {s.kind for s in SYSTEMS} == set(KINDS)


def test_systems_rotate_so_none_always_runs_first() -> None:
    firsts = [round_order(SYSTEMS, r)[0].key for r in range(len(SYSTEMS))]
    assert sorted(firsts) == sorted(s.key for s in SYSTEMS)
    assert [s.key for s in round_order(SYSTEMS, len(SYSTEMS))] == [s.key for s in SYSTEMS]


def test_plans_run_issue_11s_loads() -> None:
    for plan in (FULL, QUICK):
        assert plan.concurrencies == (1, 8, 64)
        assert plan.rates == (25, 50, 100, 200, 400, 800)
    assert FULL.rounds == 3 and QUICK.rounds == 1


def spec(key: str) -> Any:
    return next(s for s in SYSTEMS if s.key == key)


def test_rollout_systems_run_the_short_loads_unless_asked_for_all() -> None:
    shadow = plan_for(spec("shadow"), FULL)
    assert (shadow.concurrencies, shadow.rates) == ((8, 64), (50, 200))
    assert plan_for(spec("shadow"), FULL, "all") == FULL
    assert plan_for(spec("lungwatch"), FULL) == FULL
    narrow = plan_for(spec("canary"), replace(FULL, concurrencies=(8,), rates=(25, 50)))
    assert (narrow.concurrencies, narrow.rates) == ((8,), (50,))
    # none of the short loads planned: the plan's own, rather than no load at all
    assert plan_for(spec("canary"), replace(FULL, concurrencies=(1,))).concurrencies == (1,)


def test_which_systems_need_a_second_version() -> None:
    needs = {s.key for s in SYSTEMS if s.needs_second_version}
    assert needs == {"shadow", "canary", "hot_swap"}
    assert (spec("shadow").rollout_mode, spec("canary").rollout_mode) == ("shadow", "canary")
    assert spec("hot_swap").rollout_mode == "off" and spec("lungwatch").rollout_mode == "off"


def test_the_first_answer_is_checked_against_the_version_that_scored_it() -> None:
    champion, challenger = Answer(0, (0.8, 0.2, 0.0)), Answer(1, (0.3, 0.6, 0.1))
    references = {"1": champion, "2": challenger}
    canary = {"prediction": 1, "model_version": "2"}
    assert first_reference(spec("canary"), canary, references, "1") == challenger
    assert first_reference(spec("mlflow"), {"predictions": []}, references, "1") == champion
    with pytest.raises(RuntimeError, match="names version 3"):
        first_reference(spec("canary"), {"model_version": "3"}, references, "1")


def test_rollout_counters_gain_over_a_run_and_the_queue_is_read_at_its_end() -> None:
    before = {"shadow_scored": 100.0, "shadow_dropped": 2.0, "shadow_queue_rows": 9.0}
    after = {"shadow_scored": 900.0, "shadow_dropped": 2.0, "shadow_failed": 1.0,
             "shadow_queue_rows": 3.0}  # fmt: skip
    assert counter_delta(before, after) == {
        "shadow_scored": 800.0,
        "shadow_dropped": 0.0,
        "shadow_failed": 1.0,
        "shadow_queue_rows": 3.0,
    }
