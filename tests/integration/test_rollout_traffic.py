"""Shadow and canary traffic through real gateways in front of one model server that serves a
champion (version 1) and a challenger (version 2) from its own MLflow store (issue 23).

- Shadow at 100 %: answers identical, row by row, to a gateway with shadow off; every row
  scored by the challenger; the agreement table equal to the two models' answers offline.
- A challenger that is down (closed port) or slow (a proxy holding its answers past the
  deadline): every request 200 from the champion, the shadow rows counted failed or dropped.
- Canary at 30 %: the share per version within a binomial bound, for rows and for sticky
  keys; a key, or a row without one, always gets one version; a failing challenger falls back
  to the champion for exactly the requests the share sent to it.
- Feedback per version: Prometheus' model_feedback_outcomes_total equals loadgen's tally.
- Bad input: out-of-range settings stop the gateway at start-up naming the setting; a 10 kB
  sticky key is a 400 counted as invalid_request that adds no series.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.features import FEATURE_NAMES, LABELS
from contract.wire import (
    CHALLENGER,
    CHAMPION,
    MODEL_ROLE_HEADER,
    MODEL_VERSION_HEADER,
    PROBABILITIES_KEY,
    ROWS_KEY,
    ROWS_PATH,
)
from devtools import procs
from tests.support.faultproxy import FaultProxy
from tests.support.rollout_traffic import (
    Answer,
    Call,
    dataset_rows,
    predict,
    predict_batch,
    random_rows,
    scrape,
    send_all,
    total,
    values,
)

STICKY = "x-lungwatch-sticky-key"  # the gateway's default CANARY_STICKY_HEADER
CANARY_PERCENT = 30.0
SIGMAS = 4.5  # binomial bound on the canary's share: a false alarm about once in 150,000 runs
# The slow challenger: the proxy holds each answer past the gateways' model-server deadline.
DEADLINE_SECONDS = 2.0  # also the champion's: far above its milliseconds, even on a busy host
PROXY_DELAY_SECONDS = 3 * DEADLINE_SECONDS
SLOW_QUEUE_ROWS = 8  # the slow gateway's shadow queue: full after one request in eight
FAILED = "api_failed_requests_total"


@dataclass
class Rig:
    model_server: procs.ManagedProcess
    champion: str  # the registry versions served in each role
    challenger: str
    gateways: dict[str, procs.ManagedProcess]
    prometheus: procs.ManagedProcess
    workdir: Path

    def url(self, gateway: str) -> str:
        return self.gateways[gateway].url


GATEWAYS: dict[str, dict[str, str]] = {
    "off": {},
    "shadow": {"ROLLOUT_MODE": "shadow", "ROLLOUT_PERCENT": "100"},
    "shadow-down": {"ROLLOUT_MODE": "shadow", "ROLLOUT_PERCENT": "100", "CHALLENGER_URL": ""},
    "shadow-slow": {
        "ROLLOUT_MODE": "shadow",
        "ROLLOUT_PERCENT": "100",
        "CHALLENGER_URL": "",
        "MODEL_SERVER_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
        "SHADOW_QUEUE_ROWS": str(SLOW_QUEUE_ROWS),
    },
    # A short drift interval: the series set settles quickly (the bad-input test compares it).
    "canary": {
        "ROLLOUT_MODE": "canary",
        "ROLLOUT_PERCENT": str(CANARY_PERCENT),
        "DRIFT_INTERVAL_SECONDS": "0.5",
    },
    "canary-down": {
        "ROLLOUT_MODE": "canary",
        "ROLLOUT_PERCENT": str(CANARY_PERCENT),
        "CHALLENGER_URL": "",
    },
}
SCRAPED = ("shadow", "canary")  # the gateways Prometheus scrapes (job = the gateway's name)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("rollout")
    champion = procs.train_model(workdir / "mlflow", "--repeats", "2")
    challenger = procs.train_model(
        workdir / "mlflow", "--repeats", "2", "--seed", "7", "--alias", CHALLENGER
    )
    # One store, two versions: the second run registered beside the first, not over it.
    assert challenger.tracking_uri == champion.tracking_uri
    assert (champion.version, challenger.version) == ("1", "2"), (champion, challenger)
    logs = workdir / "logs"
    model_server = procs.model_server(
        champion,
        logs,
        LUNGWATCH_MODEL_SERVER_CHALLENGER_URI=challenger.model_uri,
    ).start()
    started: list[procs.ManagedProcess] = [model_server]
    proxy = FaultProxy(int(model_server.url.rsplit(":", 1)[1])).start()
    proxy.set("delay", delay=PROXY_DELAY_SECONDS)
    closed = f"http://127.0.0.1:{procs.free_port()}"  # picked, never bound: refused
    try:
        gateways = {}
        for name, settings in GATEWAYS.items():
            env = {f"LUNGWATCH_GATEWAY_{k}": v for k, v in settings.items()}
            if "CHALLENGER_URL" in settings:
                env["LUNGWATCH_GATEWAY_CHALLENGER_URL"] = proxy.url if "slow" in name else closed
            gateways[name] = procs.gateway(
                model_server.url, logs, name=f"gateway-{name}", ready_path="/ready", extra_env=env
            )
        started += gateways.values()  # stopped at the end, whichever of them started
        # The start-ups overlap each other and the challenger's load in the model server.
        with ThreadPoolExecutor(len(gateways)) as pool:
            list(pool.map(procs.ManagedProcess.start, gateways.values()))

        def challenger_served() -> bool:
            served = httpx.get(f"{model_server.url}/model", timeout=2).json()
            assert served["version"] == champion.version, served
            return (
                bool(served["challenger"]) and served["challenger"]["version"] == challenger.version
            )

        procs.wait_until(challenger_served, 90, "the model server to load the challenger")
        prometheus = procs.prometheus(
            workdir / "prometheus",
            {name: [gateways[name].url.removeprefix("http://")] for name in SCRAPED},
        ).start()
        started.append(prometheus)
        yield Rig(model_server, champion.version, challenger.version, gateways, prometheus, workdir)
    finally:
        for process in reversed(started):
            process.stop(timeout=5)
        proxy.stop()


# --- helpers ------------------------------------------------------------------------------
def lean(rig: Rig, rows: Sequence[Sequence[int]], role: str) -> list[list[float]]:
    """The model server's own answers (the lean path), asking for `role`."""
    version = rig.challenger if role == CHALLENGER else rig.champion
    headers = {MODEL_ROLE_HEADER: CHALLENGER} if role == CHALLENGER else {}
    out: list[list[float]] = []
    for start in range(0, len(rows), 500):
        response = httpx.post(
            f"{rig.model_server.url}{ROWS_PATH}",
            json={ROWS_KEY: [list(r) for r in rows[start : start + 500]]},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.headers[MODEL_ROLE_HEADER] == role  # the challenger is loaded
        assert response.headers[MODEL_VERSION_HEADER] == version
        out += response.json()[PROBABILITIES_KEY]
    return out


def by_name(row: Sequence[int]) -> dict[str, int]:
    return dict(zip(FEATURE_NAMES, row, strict=True))


def argmax(probabilities: Sequence[float]) -> int:
    return max(range(len(probabilities)), key=probabilities.__getitem__)


def answered_rows(calls: Sequence[Call], answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """One entry per row sent, in order: the answer's prediction for it and its version."""
    out: list[dict[str, Any]] = []
    for call, answer in zip(calls, answers, strict=True):
        assert answer.status == 200, answer.body
        predictions = answer.body.get("predictions", [answer.body])
        assert len(predictions) == len(call.body.get("rows", [None])), answer.body
        for item in predictions:
            out.append(
                {
                    "prediction": item["prediction"],
                    "label": item["label"],
                    "probabilities": item["prediction_probabilities"],
                    "confidence": item["confidence"],
                    "model_version": answer.model_version,
                }
            )
    return out


def rows_of(calls: Sequence[Call]) -> list[list[int]]:
    rows: list[list[int]] = []
    for call in calls:
        rows += (
            [r["features"] for r in call.body["rows"]]
            if "rows" in call.body
            else [call.body["features"]]
        )
    return rows


def shadow_rows(url: str) -> dict[str, float]:
    return {k[0]: v for k, v in values(url, "gateway_shadow_rows_total", "outcome").items()}


def within_binomial(k: int, n: int, share: float) -> bool:
    return abs(k - share * n) <= SIGMAS * math.sqrt(n * share * (1 - share))


def prom_counts(rig: Rig, expr: str, *by: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(series["metric"].get(label, "") for label in by): float(series["value"][1])
        for series in procs.prom_query(rig.prometheus.url, expr)
    }


def wait_for_scrape(rig: Rig, job: str) -> None:
    since = time.time()
    procs.wait_until(
        lambda: procs.scraped_since(rig.prometheus.url, job, since), 20, f"a scrape of {job}"
    )


# --- shadow ---------------------------------------------------------------------------------
def test_shadow_at_100_percent_answers_as_shadow_off_and_agreement_equals_offline(
    rig: Rig,
) -> None:
    # The dataset's rows (where the two models agree) and random valid rows (where they do
    # not always), each sent alone and again in batches of 50.
    rows = dataset_rows() + random_rows(500, seed=23)
    calls = [predict(r) for r in rows] + [
        predict_batch(rows[i : i + 50]) for i in range(0, len(rows), 50)
    ]
    sent = rows_of(calls)
    before = shadow_rows(rig.url("shadow"))
    off = answered_rows(calls, send_all(rig.url("off"), calls))
    shadowed = answered_rows(calls, send_all(rig.url("shadow"), calls))

    # The caller gets the champion's answer, exactly, row by row.
    assert len(shadowed) == len(off) == len(sent) == 2 * len(rows)
    mismatched = [i for i, (a, b) in enumerate(zip(off, shadowed, strict=True)) if a != b]
    assert not mismatched, [(sent[i], off[i], shadowed[i]) for i in mismatched[:5]]
    assert {a["model_version"] for a in shadowed} == {rig.champion}
    champion = lean(rig, sent, CHAMPION)
    assert [a["probabilities"] for a in shadowed] == champion

    # Every shadowed row scored by the challenger, none dropped or failed.
    procs.wait_until(
        lambda: (
            shadow_rows(rig.url("shadow")).get("scored", 0) - before.get("scored", 0) >= len(sent)
        ),
        30,
        f"{len(sent)} rows scored by the challenger",
    )
    after = shadow_rows(rig.url("shadow"))
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert delta == {"scored": len(sent)}, delta

    # The agreement table: what the two models answer offline for the same rows, cell by cell.
    challenger = lean(rig, sent, CHALLENGER)
    offline = Counter(
        (LABELS[argmax(a)], LABELS[argmax(b)]) for a, b in zip(champion, challenger, strict=True)
    )
    assert any(c != d for c, d in offline), "the two models agree on every row: a weak test"
    cells = values(
        rig.url("shadow"),
        "model_shadow_comparisons_total",
        "champion_version",
        "challenger_version",
        "champion_class",
        "challenger_class",
        "agree",
    )
    expected = {
        (rig.champion, rig.challenger, c, d, str(c == d).lower()): float(n)
        for (c, d), n in offline.items()
    }
    assert cells == expected  # a fresh gateway: this test's rows are all it has shadowed
    print(f"\nshadowed rows {len(sent)}; champion x challenger classes: {dict(offline)}")

    # The same rate through Prometheus.
    agree = sum(n for (c, d), n in offline.items() if c == d) / len(sent)
    wait_for_scrape(rig, "shadow")
    rate = procs.prom_value(
        rig.prometheus.url,
        'sum(model_shadow_comparisons_total{job="shadow",agree="true"})'
        ' / sum(model_shadow_comparisons_total{job="shadow"})',
    )
    assert rate == agree, (rate, agree)


@pytest.mark.parametrize("gateway", ["shadow-down", "shadow-slow"])
def test_a_challenger_down_or_slow_never_fails_a_champion_request(rig: Rig, gateway: str) -> None:
    url = rig.url(gateway)
    rows = random_rows(200, seed=5)
    calls = [predict(r) for r in rows[:150]] + [
        predict_batch(rows[i : i + 10]) for i in range(150, 200, 10)
    ]
    failed_before = total(url, FAILED)
    before = shadow_rows(url)
    reference = answered_rows(calls, send_all(rig.url("off"), calls))

    answers = answered_rows(calls, send_all(url, calls, concurrency=4))
    assert answers == reference  # every request 200, answered by the champion as without shadow

    # Every row ends failed (the call to the challenger failed, or its circuit was open) or
    # dropped (the slow challenger's queue was full); none is scored, none lost.
    def settled() -> dict[str, float]:
        now = shadow_rows(url)
        delta = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
        return delta if sum(delta.values()) >= len(rows) else {}

    delta = procs.wait_until(settled, 30, f"all {len(rows)} shadow rows accounted for")
    print(f"\n{gateway}: shadow rows {delta}")
    assert set(delta) <= {"failed", "dropped"} and sum(delta.values()) == len(rows), delta
    assert delta.get("failed", 0) > 0, delta
    if gateway == "shadow-slow":
        assert delta.get("dropped", 0) > 0, delta
    assert total(url, FAILED) == failed_before
    assert values(url, "gateway_shadow_queue_rows") == {(): 0.0}


# --- canary ---------------------------------------------------------------------------------
def test_canary_share_per_version_is_within_a_binomial_bound(rig: Rig) -> None:
    n = 1000
    rows = random_rows(n, seed=30)
    by_row = send_all(rig.url("canary"), [predict(r) for r in rows])
    one_row = rows[0]
    by_key = send_all(
        rig.url("canary"), [predict(one_row, {STICKY: f"patient-{i}"}) for i in range(n)]
    )
    for what, answers in (("distinct rows", by_row), ("distinct sticky keys", by_key)):
        assert all(a.status == 200 for a in answers), Counter(a.status for a in answers)
        versions = Counter(a.model_version for a in answers)
        assert set(versions) == {rig.champion, rig.challenger}, versions
        k = versions[rig.challenger]
        print(f"\ncanary {CANARY_PERCENT:g}%, {what}: {k}/{n} answered by the challenger")
        assert within_binomial(k, n, CANARY_PERCENT / 100), (what, k, n)


def test_canary_keeps_a_sticky_key_and_a_row_on_one_version(rig: Rig) -> None:
    url = rig.url("canary")
    keys = [f"session-{i}" for i in range(30)]
    rows = random_rows(300, seed=31)
    # Each key with ten different rows: the key, not the rows, decides.
    keyed = send_all(
        url, [predict(rows[j * 30 + i], {STICKY: k}) for j in range(10) for i, k in enumerate(keys)]
    )
    per_key: dict[str, set[str | None]] = {}
    for index, answer in enumerate(keyed):
        assert answer.status == 200, answer.body
        per_key.setdefault(keys[index % 30], set()).add(answer.model_version)
    assert all(len(v) == 1 for v in per_key.values()), per_key
    assert {v for seen in per_key.values() for v in seen} == {rig.champion, rig.challenger}

    # Without the header, each row ten times, half of them by name (`patient`): one version
    # per row, whichever shape carried it.
    unkeyed = send_all(
        url,
        [
            predict(rows[i]) if j % 2 else Call("/predict", {"patient": by_name(rows[i])})
            for j in range(10)
            for i in range(30)
        ],
    )
    per_row: dict[int, set[str | None]] = {}
    for index, answer in enumerate(unkeyed):
        assert answer.status == 200, answer.body
        per_row.setdefault(index % 30, set()).add(answer.model_version)
    assert all(len(v) == 1 for v in per_row.values()), per_row
    assert {v for seen in per_row.values() for v in seen} == {rig.champion, rig.challenger}


def test_a_failing_canary_challenger_falls_back_to_the_champion(rig: Rig) -> None:
    rows = random_rows(300, seed=32)
    calls = [predict(r) for r in rows]
    # The share's keys are the same on every replica: the working canary says which rows
    # the share sends to the challenger, so which ones the failing one must fall back for.
    routed = send_all(rig.url("canary"), calls)
    to_challenger = sum(a.model_version == rig.challenger for a in routed)
    assert to_challenger > 0
    url = rig.url("canary-down")
    failed_before = total(url, FAILED)
    fallbacks_before = total(url, "gateway_canary_fallbacks_total")

    answers = answered_rows(calls, send_all(url, calls))
    reference = answered_rows(calls, send_all(rig.url("off"), calls))
    assert answers == reference  # every one 200, from the champion

    fallbacks = values(url, "gateway_canary_fallbacks_total", "reason")
    print(f"\ncanary with the challenger down: {to_challenger} fallbacks expected, {fallbacks}")
    assert total(url, "gateway_canary_fallbacks_total") - fallbacks_before == to_challenger
    assert {k[0] for k in fallbacks} <= {"model_unavailable", "circuit_open"}, fallbacks
    assert total(url, FAILED) == failed_before


# --- feedback per version ----------------------------------------------------------------


def test_feedback_per_version_equals_loadgens_tally(rig: Rig) -> None:
    feedback = 'sum by (model_version, correct) (model_feedback_outcomes_total{job="canary"})'
    answered = 'sum by (model_version) (model_predictions_total{job="canary"})'
    wait_for_scrape(rig, "canary")  # after every earlier request to this gateway
    feedback_before = prom_counts(rig, feedback, "model_version", "correct")
    rows_before = prom_counts(rig, answered, "model_version")

    code, report, output = procs.run_loadgen(
        rig.workdir,
        "feedback",
        *("--url", rig.url("canary"), "--rate", "60", "--duration", "4s", "--seed", "23"),
        *("--batch-share", "0.2", "--batch-size", "5", "--sticky-keys", "40", "--feedback"),
    )
    assert code == 0 and report["unexpected"] == 0, output
    tally = report["feedback"]["by_model_version"]
    print("\nloadgen feedback by version:", tally)
    assert set(tally) == {rig.champion, rig.challenger}, output
    assert report["feedback"]["accepted"] == report["feedback"]["sent"] > 0, output
    assert report["sticky"]["keys_split"] == 0, report["sticky"]

    wait_for_scrape(rig, "canary")
    feedback_after = prom_counts(rig, feedback, "model_version", "correct")
    rows_after = prom_counts(rig, answered, "model_version")

    Counts = dict[tuple[str, ...], float]

    def delta(after: Counts, before: Counts, key: tuple[str, ...]) -> int:
        return round(after.get(key, 0.0) - before.get(key, 0.0))

    for version, counts in tally.items():
        right = delta(feedback_after, feedback_before, (version, "true"))
        wrong = delta(feedback_after, feedback_before, (version, "false"))
        assert (right, right + wrong) == (counts["correct"], counts["accepted"]), version
    assert {k[0] for k in feedback_after} <= set(tally) | {k[0] for k in feedback_before}
    rows_by_version = {k[0]: delta(rows_after, rows_before, k) for k in rows_after}
    assert {k: v for k, v in rows_by_version.items() if v} == report["rows_by_model_version"]


# --- bad input -----------------------------------------------------------------------------
BAD_SETTINGS = [
    ("ROLLOUT_PERCENT", "101"),
    ("ROLLOUT_PERCENT", "-1"),
    ("ROLLOUT_PERCENT", "abc"),
    ("ROLLOUT_MODE", "bogus"),
    ("CANARY_STICKY_HEADER", "Bad Header"),
]


def test_bad_rollout_settings_stop_the_gateway_at_start_up(rig: Rig) -> None:
    def start(setting: str, value: str) -> tuple[int, str]:
        port = procs.free_port()
        done = subprocess.run(
            [procs.PYTHON, "-m", "api"],
            env=procs.base_env(
                LUNGWATCH_GATEWAY_PORT=str(port),
                LUNGWATCH_GATEWAY_MODEL_SERVER_URL=rig.model_server.url,
                **{f"LUNGWATCH_GATEWAY_{setting}": value},
            ),
            cwd=procs.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, done.stdout + done.stderr

    with ThreadPoolExecutor(len(BAD_SETTINGS)) as pool:  # the five start-ups overlap
        results = list(pool.map(lambda bad: start(*bad), BAD_SETTINGS))
    for (setting, value), (code, output) in zip(BAD_SETTINGS, results, strict=True):
        assert code != 0, (setting, value, output)
        # The message names the setting (its field: the variable's name without the prefix).
        assert setting.lower() in output.lower(), (setting, value, output)
        assert "Uvicorn running" not in output, (setting, value, output)


def test_an_oversized_sticky_key_is_a_400_that_adds_no_series(rig: Rig) -> None:
    url = rig.url("canary")
    row = random_rows(1, seed=50)[0]
    huge = "k" * 10_240

    def refused(answer: Answer) -> None:
        assert answer.status == 400, answer.body
        assert answer.body["error"] == "invalid_sticky_key", answer.body
        assert STICKY in answer.body["message"], answer.body

    # First, each kind of answer once (their series exist from then on), the limit's edge.
    warm = send_all(
        url,
        [
            predict(row),
            predict(row, {STICKY: huge}),
            predict_batch([row], {STICKY: huge}),
            predict(row, {STICKY: "e" * 256}),
            predict(row, {STICKY: "e" * 257}),
        ],
    )
    assert [a.status for a in warm] == [200, 400, 400, 200, 400], [a.body for a in warm]
    for answer in (warm[1], warm[2], warm[4]):
        refused(answer)

    def stable() -> dict[Any, float]:
        first = scrape(url)
        time.sleep(1.2)  # over two drift recomputations (DRIFT_INTERVAL_SECONDS 0.5)
        second = scrape(url)
        return second if set(first) == set(second) else {}

    before = procs.wait_until(stable, 20, "the gateway's series set to settle")
    failed_before = total(url, FAILED, reason="invalid_request")
    keys = [f"{i:05d}" + "x" * 10_235 for i in range(20)]  # ten kB each, all different
    calls = [predict(row, {STICKY: k}) for k in keys[:15]]
    calls += [predict_batch([row, row], {STICKY: k}) for k in keys[15:]]
    for answer in send_all(url, calls):
        refused(answer)
    after = scrape(url)

    assert set(after) - set(before) == set(), sorted(set(after) - set(before))
    assert set(before) - set(after) == set()
    assert total(url, FAILED, reason="invalid_request") - failed_before == len(calls)
    text = httpx.get(f"{url}/metrics", timeout=5).text
    assert "xxxxxxxx" not in text and huge[:64] not in text
