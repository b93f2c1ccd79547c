"""Settings: one default each, the README's tables generated from the classes, and every
LUNGWATCH_* name used anywhere in the repository a real setting."""

from __future__ import annotations

import re
import subprocess

import pytest
from pydantic_settings import BaseSettings

from contract.settings import (
    GATEWAY_DEFAULTS,
    SETTINGS_CLASSES,
    GatewaySettings,
    ModelServerSettings,
    env_name,
    markdown_table,
)
from devtools.procs import REPO_ROOT

# Variables read by something other than the two settings classes.
OTHER_VARIABLES = {"LUNGWATCH_LOADGEN_URL", "LUNGWATCH_LOADGEN_API_KEY"}


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_the_readme_table_is_generated_from_the_class(settings_class: type[BaseSettings]) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert markdown_table(settings_class) in readme, (
        f"README.md's table for {settings_class.__name__} is stale: "
        "paste the output of `python -m contract.settings`"
    )


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_described(settings_class: type[BaseSettings]) -> None:
    for name, field in settings_class.model_fields.items():
        assert field.description, f"{settings_class.__name__}.{name} has no description"


def test_settings_are_read_from_their_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGWATCH_GATEWAY_BATCH_MAX_ROWS", "7")
    monkeypatch.setenv("LUNGWATCH_MODEL_SERVER_PORT", "9999")
    monkeypatch.setenv("LUNGWATCH_" + "PORT", "1")  # the old, unprefixed name: ignored
    assert GatewaySettings().batch_max_rows == 7
    assert GatewaySettings().port == 8000
    assert ModelServerSettings().port == 9999


def test_constructor_defaults_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGWATCH_GATEWAY_FEEDBACK_MAX_PENDING", "3")
    assert GATEWAY_DEFAULTS.feedback_max_pending == 100_000  # the environment is not read
    assert (
        GATEWAY_DEFAULTS.batch_max_wait_ms
        == GatewaySettings.model_fields["batch_max_wait_ms"].default
    )


def test_every_lungwatch_variable_in_the_repository_is_a_setting() -> None:
    known = OTHER_VARIABLES | {
        env_name(cls, field) for cls in SETTINGS_CLASSES for field in cls.model_fields
    }
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    unknown = set()
    for name in files:
        path = REPO_ROOT / name
        if name.startswith("results/") or path.suffix in {".csv", ".lock"} or not path.exists():
            continue
        text = path.read_text(errors="ignore")
        for variable in re.findall(r"\bLUNGWATCH_[A-Z_]+\b", text):
            if variable.endswith("_") or variable in known:
                continue
            unknown.add(f"{name}: {variable}")
    assert not unknown, "\n".join(sorted(unknown))
