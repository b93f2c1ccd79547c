"""The Alertmanager template, its render script, routing and inhibition (checked with amtool)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.procs import require_binary
from tests.config import stack_files

TEMPLATE = stack_files.ALERTMANAGER_DIR / "alertmanager.yml.tmpl"
RENDER = stack_files.ALERTMANAGER_DIR / "render-config.sh"
ALERT_NAMES = {rule.name for rule in stack_files.rules() if rule.is_alert}


def render(out: Path, url: str | None, *command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ALERTMANAGER_WEBHOOK_URL"}
    if url is not None:
        env["ALERTMANAGER_WEBHOOK_URL"] = url
    return subprocess.run(
        ["sh", str(RENDER), str(TEMPLATE), str(out), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    out = tmp_path / "alertmanager.yml"
    done = render(out, "https://hooks.example.test/lungwatch?team=ml&x=a|b")
    assert done.returncode == 0, done.stderr
    return out


def test_render_substitutes_the_url_verbatim(rendered: Path) -> None:
    config = yaml.safe_load(rendered.read_text())
    urls = {w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])}
    # & and | are special to sed: they must come through unchanged.
    assert urls == {"https://hooks.example.test/lungwatch?team=ml&x=a|b"}
    assert "${" not in rendered.read_text()


def test_render_execs_the_command_after_rendering(tmp_path: Path) -> None:
    out = tmp_path / "am.yml"
    done = render(out, "http://sink:8080/", "sh", "-c", f"grep -c sink:8080 {out}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


@pytest.mark.parametrize("url", [None, "", "sink:8080/hook", "http://sink/it's", "http://sink/a b"])
def test_render_refuses_a_missing_or_unsafe_url(tmp_path: Path, url: str | None) -> None:
    out = tmp_path / "am.yml"
    done = render(out, url)
    assert done.returncode != 0
    assert "ALERTMANAGER_WEBHOOK_URL" in done.stderr


def test_amtool_accepts_the_rendered_config(rendered: Path) -> None:
    amtool = require_binary("amtool")
    done = subprocess.run(
        [amtool, "check-config", str(rendered)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=ModelServerDown", "severity=page"], "page"),
        (["alertname=LatencySlowBurn", "severity=ticket"], "ticket"),
        (["alertname=Unlabelled"], "ticket"),
    ],
)
def test_routing_by_severity(rendered: Path, labels: list[str], receiver: str) -> None:
    amtool = require_binary("amtool")
    done = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={rendered}", *labels],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == receiver


def _inhibit_targets(source: str) -> set[str]:
    config = yaml.safe_load(TEMPLATE.read_text())
    names: set[str] = set()
    for rule in config["inhibit_rules"]:
        if f'alertname="{source}"' not in rule["source_matchers"]:
            continue
        for matcher in rule["target_matchers"]:
            match = re.fullmatch(r'alertname=~"([^"]+)"', matcher)
            assert match, matcher
            names.update(match.group(1).split("|"))
    return names


def test_model_server_down_inhibits_its_symptoms() -> None:
    targets = _inhibit_targets("ModelServerDown")
    assert targets <= ALERT_NAMES, f"inhibits unknown alerts {targets - ALERT_NAMES}"
    assert {"ErrorRateSpike", "AvailabilityFastBurn", "LatencyFastBurn"} <= targets
    # It must not silence the other cause-level alerts.
    assert not targets & {"ModelServerDown", "GatewayDown", "OtelCollectorDown"}


def test_gateway_down_inhibits_no_traffic() -> None:
    targets = _inhibit_targets("GatewayDown")
    assert targets <= ALERT_NAMES
    assert "NoTraffic" in targets
