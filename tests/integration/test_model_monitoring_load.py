"""Model monitoring under loadgen traffic (issue 6), against the real gateway and model server.

- Drift: the gateway's PSI stays low while loadgen sends dataset rows (the training
  distribution) and rises, on the shifted features only, for `loadgen --drift` rows.
- Online accuracy: `loadgen --feedback` posts the dataset's true levels back; the gateway's
  accuracy and recall gauges equal what loadgen computed for the same rows, and the feedback
  calls stay out of the prediction counters (loadgen's Prometheus reconciliation holds).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from contract.features import FEATURE_NAMES
from devtools import procs
from tests.integration.conftest import Spawn, Stack

GATEWAY_JOB = 'job="lungwatch-gateway"'
DRIFT_INTERVAL = 0.5  # seconds between the gateway's drift recomputations (default 5)
SHIFTED = {"age", "smoking", "passive_smoker"}  # loadgen's `older-smokers` profile
STABLE, SIGNIFICANT = 0.1, 0.25  # the usual PSI reading; the gateway's threshold is 0.25
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def samples(gateway_url: str, name: str) -> dict[str, float]:
    """Every sample of `name` on the gateway's /metrics, keyed by its label text."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{gateway_url}/metrics", timeout=5).text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            out[match.group(2) or ""] = float(match.group(3))
    return out


def by_label(gateway_url: str, name: str, label: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for labels, value in samples(gateway_url, name).items():
        found = re.search(rf'{label}="([^"]*)"', labels)
        if found:
            values[found.group(1)] = values.get(found.group(1), 0.0) + value
    return values


def single(gateway_url: str, name: str) -> float | None:
    values = list(samples(gateway_url, name).values())
    assert len(values) <= 1, f"{name}: {values}"
    return values[0] if values else None


def drift_after(gateway_url: str, rows: int) -> dict[str, float]:
    """Per-feature PSI once the window holds `rows` rows and has been recomputed since."""
    procs.wait_until(
        lambda: (single(gateway_url, "model_drift_window_rows") or 0) >= rows,
        15,
        f"{rows} rows in the gateway's drift window",
    )
    time.sleep(3 * DRIFT_INTERVAL)  # at least one recomputation over the full window
    return procs.wait_until(
        lambda: by_label(gateway_url, "model_feature_drift_psi", "feature"),
        15,
        "per-feature drift scores (is the drift reference loaded?)",
    )


def test_drift_stays_low_for_training_rows_and_rises_for_shifted_ones(
    stack: Stack, spawn: Spawn, tmp_path: Path
) -> None:
    gateway = spawn(
        procs.gateway(
            stack.model_server_url,
            tmp_path,
            LUNGWATCH_GATEWAY_DRIFT_INTERVAL_SECONDS=str(DRIFT_INTERVAL),
            LUNGWATCH_GATEWAY_DRIFT_WINDOW_ROWS="1000",
        )
    )
    # 1000 dataset rows in batches of 25: the window is full of the training distribution.
    batches = ("--rate", "20", "--requests", "40", "--batch-share", "1", "--batch-size", "25")
    code, report, output = procs.run_loadgen(
        tmp_path, "plain", "--url", gateway.url, *batches, "--seed", "1"
    )
    assert code == 0 and report["status_codes"] == {"200": 40}, output
    plain = drift_after(gateway.url, 1000)
    assert set(plain) == set(FEATURE_NAMES)
    print("\nPSI, dataset rows:", {k: round(v, 3) for k, v in sorted(plain.items())})
    assert max(plain.values()) < STABLE, plain
    assert single(gateway.url, "model_drift_score") == pytest.approx(max(plain.values()))
    assert single(gateway.url, "model_drifted_features") == 0

    # Another 1000 rows, all shifted: they replace the whole window.
    code, report, output = procs.run_loadgen(
        tmp_path, "drift", "--url", gateway.url, *batches, "--seed", "2", "--drift"
    )
    assert code == 0 and report["status_codes"] == {"200": 40}, output  # shifted, still valid
    assert report["drift"]["shifted_rows_answered"] == 1000, output
    assert report["accuracy"]["labelled_rows"] == 0  # shifted rows have no true level
    procs.wait_until(
        lambda: (single(gateway.url, "model_drift_score") or 0) > SIGNIFICANT,
        15,
        "the drift score to rise above the threshold",
    )
    shifted = drift_after(gateway.url, 1000)
    print("PSI, older-smokers rows:", {k: round(v, 3) for k, v in sorted(shifted.items())})
    for feature in SHIFTED:
        assert shifted[feature] > SIGNIFICANT, (feature, shifted[feature])
        assert shifted[feature] > 5 * max(plain[feature], 0.01)
    # The other 20 features were sent as the dataset has them: they stay stable.
    assert max(v for k, v in shifted.items() if k not in SHIFTED) < STABLE, shifted
    assert single(gateway.url, "model_drift_score") == pytest.approx(max(shifted.values()))
    assert single(gateway.url, "model_drifted_features") == len(SHIFTED)


def test_feedback_makes_online_accuracy_equal_loadgens_and_stays_out_of_the_counters(
    stack: Stack, spawn: Spawn, tmp_path: Path
) -> None:
    gateway = spawn(procs.gateway(stack.model_server_url, tmp_path))
    prometheus = spawn(
        procs.prometheus(
            tmp_path / "prometheus", {"lungwatch-gateway": [gateway.url.removeprefix("http://")]}
        )
    )
    # ~300 rows (fewer than the gateway's 1000-outcome window, so it holds all of them), a
    # share of them shifted (no true level, so no feedback), and invalid requests.
    code, report, output = procs.run_loadgen(
        tmp_path,
        "feedback",
        *("--url", gateway.url, "--rate", "25", "--duration", "6s", "--seed", "3"),
        *("--batch-share", "0.2", "--batch-size", "5", "--invalid", "0.05"),
        *("--drift", "--drift-share", "0.2", "--feedback"),
        *("--check-prometheus", prometheus.url, "--prometheus-selector", GATEWAY_JOB),
    )
    print("\n" + output)
    feedback = report["feedback"]
    labelled = report["accuracy"]["labelled_rows"]
    assert code == 0 and report["unexpected"] == 0, output
    assert 100 < labelled < 1000, output
    assert feedback["sent"] == feedback["accepted"] == labelled, output
    assert feedback["skipped_unlabelled"] == report["drift"]["shifted_rows_answered"] > 0

    # The gateway's online accuracy is loadgen's, for the same rows, to the last digit.
    assert single(gateway.url, "model_feedback_window_rows") == labelled
    online = single(gateway.url, "model_online_accuracy")
    assert online == pytest.approx(feedback["accuracy_of_accepted"], abs=1e-9)
    assert online == pytest.approx(report["accuracy"]["accuracy"], abs=1e-9)
    recall = by_label(gateway.url, "model_online_recall", "class")
    expected_recall = {k: v for k, v in feedback["recall_of_accepted"].items() if v is not None}
    assert recall == pytest.approx(expected_recall, abs=1e-9)
    assert by_label(gateway.url, "model_feedback_total", "result") == {"accepted": labelled}
    # Every row predicted (shifted ones too) is in the class counter, once.
    rows_predicted = labelled + report["drift"]["shifted_rows_answered"]
    assert sum(by_label(gateway.url, "model_predictions_total", "class").values()) == rows_predicted

    # Feedback calls are not prediction requests: Prometheus counted exactly loadgen's
    # prediction requests (the reconciliation above), and none under another endpoint.
    prom = report["prometheus"]
    assert prom["ok"] and prom["observed"]["api_total_requests_total"] == report["sent"], output
    endpoints = by_label(gateway.url, "api_total_requests_total", "endpoint")
    assert set(endpoints) <= {"/predict", "/predict/batch"}, endpoints
    assert sum(endpoints.values()) == report["sent"]
