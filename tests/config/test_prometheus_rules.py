"""prometheus.yml and the SLO/alert rules: promtool checks, rule unit tests, conventions.

promtool runs for real: outside CI a missing promtool skips these tests, in CI it fails them
(devtools.procs.require_binary).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from devtools.procs import require_binary
from telemetry import instruments as ins
from tests.config import stack_files

RULE_FILES = stack_files.rule_files()
RULE_TESTS = sorted(stack_files.RULE_TESTS_DIR.glob("*.test.yml"))
ALERTS = [rule for rule in stack_files.rules() if rule.is_alert]
SEVERITIES = {"page", "ticket"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=stack_files.REPO_ROOT,
    )


def test_there_are_rules_and_rule_tests() -> None:
    assert len(RULE_FILES) >= 3, RULE_FILES
    assert len(RULE_TESTS) >= 3, RULE_TESTS


def test_promtool_check_config() -> None:
    # Also checks every rule file prometheus.yml's rule_files glob matches.
    done = promtool("check", "config", stack_files.PROMETHEUS_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    checked = {Path(p).resolve() for p in re.findall(r"Checking (\S+\.yml)", done.stdout)}
    expected = {p.resolve() for p in RULE_FILES}
    assert expected <= checked, f"prometheus.yml does not load {expected - checked}"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(path: Path) -> None:
    done = promtool("test", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test() -> None:
    tested = "\n".join(p.read_text() for p in RULE_TESTS)
    untested = [a.name for a in ALERTS if not re.search(rf"\b{a.name}\b", tested)]
    assert not untested, f"alerts without a promtool test: {untested}"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_alert_has_severity_summary_description_runbook(alert: stack_files.Rule) -> None:
    labels = alert.body.get("labels", {})
    annotations = alert.body.get("annotations", {})
    assert labels.get("severity") in SEVERITIES, f"{alert.name}: severity {labels}"
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{alert.name} has no {key}"


def _doc_anchors() -> set[str]:
    """GitHub-style anchors of the headings of docs/observability.md."""
    anchors = set()
    for line in stack_files.DOCS_FILE.read_text().splitlines():
        match = re.match(r"#+\s+(.*)", line)
        if match:
            text = match.group(1).strip().lower()
            text = re.sub(r"[^\w\- ]", "", text)
            anchors.add(text.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_runbook_url_points_at_a_docs_section(alert: stack_files.Rule) -> None:
    url = alert.body["annotations"]["runbook_url"]
    path, _, anchor = url.partition("#")
    assert (stack_files.REPO_ROOT / path) == stack_files.DOCS_FILE, url
    assert anchor in _doc_anchors(), f"{url}: no heading with that anchor in {path}"


def test_latency_slo_threshold_is_a_bucket_boundary() -> None:
    """The le="..." the latency SLO reads must be a boundary the histogram really has."""
    les = set()
    for rule in stack_files.rules():
        les.update(re.findall(r'\ble="([^"]+)"', rule.expr))  # not role="..."
    assert les, "no latency rule reads a bucket"
    boundaries = {f"{b:g}" for b in ins.ENDPOINT_REQUEST_TIME.buckets or ()}
    assert les <= boundaries, f"{les - boundaries} are not buckets of {sorted(boundaries)}"


def test_availability_slo_excludes_client_errors_everywhere() -> None:
    """Every read of the failure counter in the SLO rules excludes invalid_request."""
    for rule in stack_files.rules():
        for selector in re.findall(r"api_failed_requests_total(\{[^}]*\})?", rule.expr):
            assert 'reason!="invalid_request"' in selector, f"{rule.name}: {rule.expr}"
