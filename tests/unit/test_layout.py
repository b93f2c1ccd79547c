"""The package layout of docs/architecture.md holds: who may import whom, what each process
installs, and what each process's modules pull in when they really run."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from devtools.procs import REPO_ROOT, base_env

# Package -> first-party packages it may import (itself always). docs/architecture.md has
# the same table; test_architecture_doc_states_these_rules keeps the two together.
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "contract": set(),
    "telemetry": set(),
    "api": {"contract", "telemetry"},
    "model": {"contract", "telemetry"},
    "loadgen": {"contract"},
    "devtools": {"contract"},
    "bench": {"contract", "devtools"},
    "scripts": set(),
}
FIRST_PARTY = set(ALLOWED_IMPORTS) | {"tests"}
# What the gateway and loadgen must never load, install or import.
HEAVY = {"mlflow", "sklearn", "pandas", "scipy", "matplotlib"}
HEAVY_DISTRIBUTIONS = {"mlflow-skinny", "mlflow", "scikit-learn", "pandas", "scipy"}
DEV_TOOLS = {"pytest", "mypy", "ruff", "schemathesis", "hypothesis"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in a file, lazy (in-function) imports included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_each_package_imports_only_what_its_layer_allows(package: str) -> None:
    allowed = ALLOWED_IMPORTS[package] | {package}
    offences = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for name in sorted(imported_packages(path) & FIRST_PARTY - allowed):
            offences.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("package", ["contract", "telemetry", "api", "loadgen"])
def test_light_packages_never_name_heavy_libraries(package: str) -> None:
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        heavy = imported_packages(path) & (
            HEAVY - ({"matplotlib"} if package == "loadgen" else set())
        )
        assert not heavy, f"{path.relative_to(REPO_ROOT)} imports {sorted(heavy)}"


def _group_closure(group: str) -> set[str]:
    """Every distribution a dependency group installs, resolved through uv.lock."""
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    groups = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["dependency-groups"]

    def requirements(name: str) -> list[str]:
        out: list[str] = []
        for item in groups[name]:
            if isinstance(item, dict):
                out.extend(requirements(item["include-group"]))
            else:
                out.append(item)
        return out

    def base_name(requirement: str) -> str:
        for stop in "<>=!~[; ":
            requirement = requirement.split(stop)[0]
        return requirement.strip().lower().replace("_", "-")

    todo = [base_name(r) for r in requirements(group)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(dep["name"] for dep in packages[name].get("dependencies", []))
    return seen


@pytest.mark.parametrize("group", ["gateway", "loadgen"])
def test_light_processes_install_no_mlflow_sklearn_pandas_or_dev_tools(group: str) -> None:
    installed = _group_closure(group)
    assert "fastapi" in installed or group == "loadgen"  # the closure walk found something
    forbidden = installed & (HEAVY_DISTRIBUTIONS | DEV_TOOLS)
    assert not forbidden, f"the {group} group installs {sorted(forbidden)}"


def test_the_model_group_has_what_serving_needs() -> None:
    installed = _group_closure("model")
    assert {"mlflow-skinny", "scikit-learn", "pandas", "fastapi", "uvicorn"} <= installed
    assert not installed & DEV_TOOLS


# What each process really runs at start, in a fresh interpreter.
STARTUPS = {
    "gateway": "from api.app import create_app; create_app()",
    "loadgen": (
        "import loadgen.cli, loadgen.runner, loadgen.report;"
        "from loadgen.payloads import load_rows; assert len(load_rows()) == 1000"
    ),
}


@pytest.mark.parametrize("process", sorted(STARTUPS))
def test_light_processes_load_no_heavy_module(process: str) -> None:
    code = f"{STARTUPS[process]}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=base_env(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}
    assert "fastapi" in loaded or process == "loadgen"
    assert not loaded & (HEAVY | DEV_TOOLS), sorted(loaded & (HEAVY | DEV_TOOLS))


def test_importing_telemetry_leaves_the_environment_alone() -> None:
    code = (
        "import os; before = dict(os.environ); import telemetry, api.app, model.serve;"
        "assert dict(os.environ) == before, set(os.environ) ^ set(before)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=base_env(), cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_architecture_doc_states_these_rules() -> None:
    doc = (REPO_ROOT / "docs" / "architecture.md").read_text()
    for package, allowed in ALLOWED_IMPORTS.items():
        may = ", ".join(f"`{name}`" for name in sorted(allowed)) or "nothing first-party"
        assert f"| `{package}/` | {may} |" in doc, f"docs/architecture.md: row for {package}/"
