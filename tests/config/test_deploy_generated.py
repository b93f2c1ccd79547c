"""deploy/'s PrometheusRules and dashboard ConfigMaps are exact copies of prometheus/rules and grafana/dashboards."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.config import stack_files
from tests.config.test_deploy_manifests import OVERLAYS, REPO_ROOT, rendered

GENERATOR = REPO_ROOT / "deploy" / "generate.py"
GRAFANA_VALUES = REPO_ROOT / "deploy" / "platform" / "grafana-values.yaml"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_generate", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_in_sync_with_their_sources() -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_check_notices_an_edited_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = load_generator()
    rules = tmp_path / "rules"
    shutil.copytree(stack_files.RULES_DIR, rules)
    assert generator.stale_files() == []
    monkeypatch.setattr(generator, "RULES_DIR", rules)
    first = sorted(rules.glob("*.yml"))[0]
    first.write_text(first.read_text().replace("for: ", "for: 1", 1))
    assert generator.stale_files() == ["deploy/components/monitoring/prometheusrules.yaml"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_prometheus_rules_equal_the_rule_files(overlay: str) -> None:
    rules = {
        o["metadata"]["annotations"]["lungwatch.io/source"]: o["spec"]["groups"]
        for o in rendered(overlay)
        if o["kind"] == "PrometheusRule"
    }
    expected = {
        f"prometheus/rules/{path.name}": stack_files.load_yaml(path)["groups"]
        for path in stack_files.rule_files()
    }
    assert rules == expected


def dashboard_config_maps(overlay: str) -> list[dict[str, Any]]:
    return [
        o
        for o in rendered(overlay)
        if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"].get("labels", {})
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_dashboards_equal_the_dashboard_files(overlay: str) -> None:
    rendered_files = {
        name: text for cm in dashboard_config_maps(overlay) for name, text in cm["data"].items()
    }
    expected = {p.name: p.read_text() for p, _ in stack_files.dashboards()}
    assert rendered_files == expected
    for text in rendered_files.values():
        json.loads(text)


def test_grafana_sidecar_finds_the_dashboards_in_their_folder() -> None:
    sidecar = yaml.safe_load(GRAFANA_VALUES.read_text())["sidecar"]["dashboards"]
    assert sidecar["enabled"] is True
    assert sidecar["searchNamespace"] == "ALL"
    assert sidecar["provider"]["foldersFromFilesStructure"] is True
    config_maps = dashboard_config_maps("prod")
    assert len(config_maps) == len(stack_files.dashboards())
    for cm in config_maps:
        assert cm["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
        assert cm["metadata"]["annotations"][sidecar["folderAnnotation"]] == "Lungwatch"
        # No hash suffix: the sidecar keys on labels, a suffix would only leave stale copies.
        assert cm["metadata"]["name"].startswith("lungwatch-dashboard-")
        assert cm["metadata"]["name"].removeprefix("lungwatch-dashboard-") + ".json" in cm["data"]
