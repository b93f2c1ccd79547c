"""Hot reload against real processes (issue 23): the model server follows its registry aliases
under steady load with no failed request, refuses broken versions while the old one keeps
serving, refuses bad start-up settings by name, and reloads at once on SIGHUP or POST
/admin/reload when it does not poll.

The module trains its own registry (version 1 @champion, version 2 by another seed, and three
broken versions built from their files) and starts one model server (poll every second,
challenger alias followed), one gateway and one Prometheus, shared by the tests that move
aliases; each such test first puts the aliases where it needs them and waits until the model
server serves exactly that. The session's `trained_model` store is never touched.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from contract.features import EXAMPLE_FEATURES
from contract.settings import REGISTERED_MODEL_NAME
from contract.wire import MODEL_ROLE_HEADER, MODEL_VERSION_HEADER, ROWS_KEY, ROWS_PATH
from devtools import procs
from tests.support.registry import (
    BrokenVersions,
    Registry,
    metric_series,
    metric_value,
    register_broken_versions,
    scrape,
    served,
    served_versions,
)

NAME = REGISTERED_MODEL_NAME
CHAMPION_URI = f"models:/{NAME}@champion"
CHALLENGER_URI = f"models:/{NAME}@challenger"
GATEWAY_JOB = "lungwatch-gateway"
MODEL_SERVER_JOB = "lungwatch-model-server"
RELOAD_INTERVAL_SECONDS = 1.0
# Deadline for one moved alias to be fetched, gated (a child process importing MLflow and
# scoring 11,000 rows through both the pipeline and the graph) and loaded: 3-8 s measured
# here, with the other tests of a `make test` on the same 2 cores. Polled, never slept.
FETCH_SECONDS = 60.0
RELOAD_DEADLINE = RELOAD_INTERVAL_SECONDS + FETCH_SECONDS
SCRAPE_SECONDS = 1.0
# loadgen maps its loop clock to the wall clock once; this test reads the wall clock itself.
CLOCK_SLACK_SECONDS = 0.05
LOAD_RATE, LOAD_SECONDS = 50, 60


@dataclass(frozen=True)
class Store:
    registry: Registry
    first: procs.TrainedModel  # version 1, @champion
    broken: BrokenVersions


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    workdir = tmp_path_factory.mktemp("rollout-reload") / "mlflow"
    first = procs.train_model(workdir, "--repeats", "2")
    second = procs.train_model(workdir, "--repeats", "2", "--seed", "7", "--alias", "challenger")
    # Same workdir, same sqlite file: one registry holding both versions.
    assert first.tracking_uri == second.tracking_uri
    assert (first.version, second.version) == ("1", "2")
    registry = Registry(first.tracking_uri, workdir)
    broken = register_broken_versions(registry, workdir.parent / "scratch")
    assert (broken.corrupt_onnx, broken.garbage_mlmodel, broken.mismatched_onnx) == ("3", "4", "5")
    # The model server starts with its challenger alias not set yet: that is not an error.
    registry.delete_alias("challenger")
    assert registry.aliases() == {"champion": "1"}
    return Store(registry, first, broken)


@dataclass
class Rollout:
    store: Store
    model_server: procs.ManagedProcess
    gateway: procs.ManagedProcess
    prometheus: procs.ManagedProcess

    @property
    def registry(self) -> Registry:
        return self.store.registry

    def settle(self, champion: str, challenger: str | None) -> None:
        """Aliases moved to these versions, and the model server serving exactly them."""
        self.registry.set_alias("champion", champion)
        if challenger is None:
            self.registry.delete_alias("challenger")
        else:
            self.registry.set_alias("challenger", challenger)
        procs.wait_until(
            lambda: served_versions(self.model_server.url) == (champion, challenger),
            RELOAD_DEADLINE,
            f"the model server serving champion {champion}, challenger {challenger}",
        )

    def reloads(self, role: str, result: str) -> float:
        """model_reloads_total{role, result} on the model server's own /metrics."""
        return metric_value(
            scrape(self.model_server.url), "model_reloads_total", role=role, result=result
        )


@pytest.fixture(scope="module")
def rollout(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    logs = tmp_path_factory.mktemp("rollout-reload-logs")
    model_server = procs.model_server(
        store.first,
        logs,
        LUNGWATCH_MODEL_SERVER_RELOAD_INTERVAL_SECONDS=str(RELOAD_INTERVAL_SECONDS),
        LUNGWATCH_MODEL_SERVER_CHALLENGER_URI=CHALLENGER_URI,
    ).start()
    gateway = procs.gateway(model_server.url, logs, ready_path="/ready").start()
    hostport = {p.name: p.url.removeprefix("http://") for p in (model_server, gateway)}
    prometheus = procs.prometheus(
        logs / "prometheus",
        {GATEWAY_JOB: [hostport["gateway"]], MODEL_SERVER_JOB: [hostport["model-server"]]},
        interval=f"{SCRAPE_SECONDS:g}s",
    ).start()
    yield Rollout(store, model_server, gateway, prometheus)
    for process in (prometheus, gateway, model_server):
        process.stop()


def log_lines(process: procs.ManagedProcess) -> list[dict[str, Any]]:
    """The JSON log lines of a server (other output, e.g. a traceback, skipped)."""
    lines = []
    for text in process.log_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def lean_call(model_server_url: str, role: str | None = None) -> httpx.Response:
    """One row on the model server's lean path, as the gateway sends it."""
    headers = {MODEL_ROLE_HEADER: role} if role else {}
    response = httpx.post(
        f"{model_server_url}{ROWS_PATH}",
        json={ROWS_KEY: [list(EXAMPLE_FEATURES)]},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response


def gateway_requests(gateway_url: str) -> float:
    return metric_value(scrape(gateway_url), "api_total_requests_total")


def prometheus_champions(prom_url: str) -> set[str]:
    series = procs.prom_query(prom_url, f'model_info{{job="{MODEL_SERVER_JOB}",role="champion"}}')
    return {s["metric"]["model_version"] for s in series}


def prometheus_reloads(prom_url: str, role: str, result: str) -> float:
    expr = f'model_reloads_total{{job="{MODEL_SERVER_JOB}",role="{role}",result="{result}"}}'
    return sum(float(s["value"][1]) for s in procs.prom_query(prom_url, expr))


# --- 1. promote and roll back under steady load ----------------------------------------
@dataclass(frozen=True)
class ChampionChange:
    """@champion moved from `old` to `new`: not before `before`, and the model server served
    `new` (its /model said so) by `seen`. In between, either version may answer."""

    old: str
    new: str
    before: float
    seen: float


def acceptable_versions(
    sent: float, done: float, first: str, changes: list[ChampionChange]
) -> set[str]:
    """The versions that were champion at some moment of [sent, done]: the one champion
    outside the changes' windows, both old and new inside one."""
    start, end = sent - CLOCK_SLACK_SECONDS, done + CLOCK_SLACK_SECONDS
    found: set[str] = set()
    champion, since = first, -math.inf
    for change in changes:
        if start < change.before and end > since:
            found.add(champion)
        if start <= change.seen and end >= change.before:
            found |= {change.old, change.new}
        champion, since = change.new, change.seen
    if end > since:
        found.add(champion)
    return found


def test_acceptable_versions_follow_the_windows() -> None:
    changes = [ChampionChange("1", "2", 10.0, 15.0), ChampionChange("2", "1", 30.0, 35.0)]
    assert acceptable_versions(1.0, 2.0, "1", changes) == {"1"}
    assert acceptable_versions(9.0, 10.5, "1", changes) == {"1", "2"}
    assert acceptable_versions(16.0, 17.0, "1", changes) == {"2"}
    assert acceptable_versions(14.0, 16.0, "1", changes) == {"1", "2"}
    assert acceptable_versions(36.0, 37.0, "1", changes) == {"1"}
    assert acceptable_versions(20.0, 31.0, "1", changes) == {"1", "2"}


def at(moment: float) -> None:
    """Wait for a point of the scenario's schedule (not an assertion: the steps that follow
    poll for what they expect)."""
    time.sleep(max(0.0, moment - time.time()))


def moved(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_promote_and_roll_back_under_steady_load_fail_no_request(
    rollout: Rollout, tmp_path: Path
) -> None:
    rollout.settle(champion="1", challenger=None)
    server, prom = rollout.model_server.url, rollout.prometheus.url
    counted = {
        (role, result): rollout.reloads(role, result)
        for role, result in (
            ("champion", "swapped"),
            ("challenger", "swapped"),
            ("challenger", "removed"),
        )
    }
    record, report_path = tmp_path / "record.jsonl", tmp_path / "report.json"
    before_load = gateway_requests(rollout.gateway.url)
    loadgen_log = (tmp_path / "loadgen.log").open("w")
    loadgen = subprocess.Popen(
        [procs.PYTHON, "-m", "loadgen", "--url", rollout.gateway.url, "--quiet",
         "--rate", str(LOAD_RATE), "--duration", f"{LOAD_SECONDS}s", "--seed", "23",
         "--record", str(record), "--json", str(report_path),
         "--check-prometheus", prom, "--prometheus-selector", f'job="{GATEWAY_JOB}"'],
        env=procs.base_env(), cwd=procs.REPO_ROOT, stdout=loadgen_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # loadgen first waits for Prometheus to settle; the schedule counts from its traffic.
        procs.wait_until(
            lambda: gateway_requests(rollout.gateway.url) > before_load, 120, "loadgen's traffic"
        )
        t0 = time.time()
        changes: list[ChampionChange] = []
        delays: dict[str, float] = {}

        def champion_moves(command: str, old: str, new: str) -> None:
            before = time.time()
            result = moved(rollout.registry.cli(command))
            assert result["champion"] == new, result
            moved_at = time.time()
            delays[f"{command} cli"] = moved_at - before
            procs.wait_until(
                lambda: served_versions(server)[0] == new,
                RELOAD_DEADLINE,
                f"the model server serving champion {new} after {command}",
                interval=0.05,
            )
            changes.append(ChampionChange(old, new, before, time.time()))
            delays[f"{command} served"] = time.time() - moved_at
            # Visible in Prometheus within the poll interval, the fetch and one scrape.
            procs.wait_until(
                lambda: prometheus_champions(prom) == {new},
                RELOAD_DEADLINE + 2 * SCRAPE_SECONDS,
                f'model_info{{role="champion"}} of version {new} alone in Prometheus',
            )
            delays[f"{command} in Prometheus"] = time.time() - moved_at

        # ~10 s: a challenger; ~20 s: promote it; ~35 s: roll back, each step once the one
        # before is served, so a slow reload delays the schedule instead of overlapping it;
        # the rollback leaves a margin for a slow reload to be served before the load ends.
        at(t0 + 10)
        rollout.registry.set_alias("challenger", "2")
        procs.wait_until(
            lambda: served_versions(server) == ("1", "2"),
            RELOAD_DEADLINE,
            "the challenger loaded beside the champion",
        )
        delays["challenger served"] = time.time() - t0 - 10
        at(t0 + 20)
        champion_moves("promote", "1", "2")  # also removes @challenger (it is the champion)
        at(t0 + 35)
        champion_moves("rollback", "2", "1")
        assert rollout.registry.aliases() == {"champion": "1", "previous-champion": "2"}
        code = loadgen.wait(timeout=LOAD_SECONDS + 180)
    finally:
        if loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        loadgen_log.close()
    output = (tmp_path / "loadgen.log").read_text()
    assert code == 0, output
    report = json.loads(report_path.read_text())

    # 0 failed requests, at the rate asked for, for the whole run.
    expected = LOAD_RATE * LOAD_SECONDS
    assert report["sent"] == expected and report["dropped"] == 0, output
    assert report["status_codes"] == {"200": expected}, output
    assert report["timeouts"] == report["connection_errors"] == report["other_errors"] == 0
    assert report["unexpected"] == 0, output
    # loadgen's own counts equal the gateway's counters in Prometheus, exactly.
    assert report["prometheus"]["ok"], output
    assert report["prometheus"]["observed"] == {
        "api_total_requests_total": expected,
        "api_successful_requests_total": expected,
        "api_failed_requests_total": 0,
    }, output

    # Every answer came from a version that was champion while it was being answered.
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(lines) == expected
    wrong = [
        line
        for line in lines
        if line["status"] != 200
        or line["model_version"]
        not in acceptable_versions(line["sent"], line["done"], "1", changes)
    ]
    assert not wrong, f"{len(wrong)} answers off the champion timeline {changes}: {wrong[:5]}"
    # The timeline is not vacuous: both versions answered, and the load outlasted the rollback
    # (answers after it are all version 1 again).
    after_rollback = [
        line for line in lines if line["sent"] > changes[-1].seen + CLOCK_SLACK_SECONDS
    ]
    assert after_rollback, f"the rollback was served after the load ended: {changes}, {delays}"
    assert {line["model_version"] for line in after_rollback} == {"1"}
    assert set(report["by_model_version"]) == {"1", "2"}, report["by_model_version"]

    # Two champion swaps; the challenger loaded once and removed once (promote dropped it).
    assert rollout.reloads("champion", "swapped") == counted["champion", "swapped"] + 2
    assert rollout.reloads("challenger", "swapped") == counted["challenger", "swapped"] + 1
    assert rollout.reloads("challenger", "removed") == counted["challenger", "removed"] + 1
    procs.wait_until(
        lambda: (
            prometheus_reloads(prom, "champion", "swapped") == counted["champion", "swapped"] + 2
        ),
        10 * SCRAPE_SECONDS,
        'model_reloads_total{role="champion",result="swapped"} up by 2 in Prometheus',
    )
    print(f"reload delays (s): { {k: round(v, 2) for k, v in delays.items()} }")


# --- 2. broken versions are refused, the old one keeps serving --------------------------
@dataclass
class Prober:
    """The gateway's /ready and one prediction, asked over and over on another thread."""

    gateway_url: str
    ready: list[int] = field(default_factory=list)
    answers: list[tuple[int, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.gateway_url, timeout=10, trust_env=False) as client:
            while not self.stop.is_set():
                try:
                    self.ready.append(client.get("/ready").status_code)
                    answer = client.post("/predict", json={"features": list(EXAMPLE_FEATURES)})
                    version = answer.json().get("model_version")
                    self.answers.append((answer.status_code, version))
                except (httpx.HTTPError, ValueError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.stop.wait(0.05)


def test_broken_versions_are_refused_and_the_old_one_keeps_serving(rollout: Rollout) -> None:
    rollout.settle(champion="1", challenger=None)
    probe = Prober(rollout.gateway.url)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    broken = rollout.store.broken
    cases = [
        (broken.corrupt_onnx, "refused_load", "files do not load"),
        (broken.garbage_mlmodel, "refused_load", "version does not load"),
        (broken.mismatched_onnx, "refused_gate", "ONNX probabilities differ"),
    ]
    start = {
        result: rollout.reloads("champion", result) for result in ("refused_load", "refused_gate")
    }
    swapped = rollout.reloads("champion", "swapped")
    try:
        refused = dict.fromkeys(start, 0)
        for version, result, reason in cases:
            rollout.registry.set_alias("champion", version)
            refused[result] += 1
            expected = start[result] + refused[result]

            def counted(result: str = result, expected: float = expected) -> bool:
                return rollout.reloads("champion", result) == expected

            procs.wait_until(
                counted,
                RELOAD_DEADLINE,
                f'version {version} counted in model_reloads_total{{result="{result}"}}',
            )
            # The old version keeps serving: /model, the header of every answer, the lean path.
            model = httpx.get(f"{rollout.model_server.url}/model", timeout=5)
            assert model.json()["version"] == "1"
            assert model.headers[MODEL_VERSION_HEADER] == "1"
            assert lean_call(rollout.model_server.url).headers[MODEL_VERSION_HEADER] == "1"
            logged = [
                line
                for line in log_lines(rollout.model_server)
                if f"champion: version {version} refused" in line["msg"]
            ]
            assert len(logged) == 1, f"no single refusal line for version {version}"
            assert logged[0]["level"] == "error" and reason in logged[0]["msg"], logged[0]
        # Each refusal counted once, though the registry was asked every second meanwhile.
        for result, count in refused.items():
            assert rollout.reloads("champion", result) == start[result] + count
        assert rollout.reloads("champion", "swapped") == swapped
    finally:
        rollout.registry.set_alias("champion", "1")
        probe.stop.set()
        thread.join(15)
    assert served_versions(rollout.model_server.url) == ("1", None)
    assert not probe.errors, probe.errors[:5]
    assert len(probe.answers) >= 10, "too few predictions to show anything"
    assert set(probe.ready) == {200}, probe.ready
    assert set(probe.answers) == {(200, "1")}, set(probe.answers)


# --- 3. start-up settings, and a challenger alias that comes and goes -------------------
def start_up_failure(store: Store, tmp_path: Path, **env: str) -> tuple[int, str]:
    """A model server that must not start: its exit code and its whole output."""
    settings = {
        "LUNGWATCH_MODEL_SERVER_MODEL_URI": CHAMPION_URI,
        "LUNGWATCH_MODEL_SERVER_PORT": str(procs.free_port()),
        **env,
    }
    done = subprocess.run(
        [procs.PYTHON, "-m", "model.serve"],
        env=procs.base_env(MLFLOW_TRACKING_URI=store.registry.tracking_uri, **settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("env", "setting", "detail"),
    [
        pytest.param(
            {"LUNGWATCH_MODEL_SERVER_CHALLENGER_URI": "models:/x@bad alias"},
            "LUNGWATCH_MODEL_SERVER_CHALLENGER_URI",
            "'models:/x@bad alias' is not models:/<name>@<alias>",
            id="challenger-alias-with-a-space",
        ),
        pytest.param(
            {"LUNGWATCH_MODEL_SERVER_CHALLENGER_URI": CHAMPION_URI},
            "LUNGWATCH_MODEL_SERVER_CHALLENGER_URI",
            "the champion's URI",
            id="challenger-same-as-champion",
        ),
        pytest.param(
            {"LUNGWATCH_MODEL_SERVER_MODEL_URI": f"models:/{NAME}@nosuch"},
            "LUNGWATCH_MODEL_SERVER_MODEL_URI",
            "nosuch",
            id="champion-alias-not-set",
        ),
        pytest.param(
            {"LUNGWATCH_MODEL_SERVER_MODEL_URI": f"models:/{NAME}/99"},
            "LUNGWATCH_MODEL_SERVER_MODEL_URI",
            "99",
            id="champion-version-that-does-not-exist",
        ),
    ],
)
def test_bad_start_up_settings_stop_the_model_server_naming_the_setting(
    store: Store, tmp_path: Path, env: dict[str, str], setting: str, detail: str
) -> None:
    code, output = start_up_failure(store, tmp_path, **env)
    assert code != 0, output
    assert "Uvicorn running" not in output
    # The message names what to fix: the setting, and what is wrong with its value.
    lines = [line for line in output.splitlines() if setting in line]
    assert lines, f"no line names {setting}:\n{output}"
    assert any(detail in line for line in lines), f"no line says {detail!r}:\n{output}"


def test_a_challenger_alias_is_loaded_when_set_and_removed_when_deleted(
    rollout: Rollout,
) -> None:
    rollout.settle(champion="1", challenger=None)
    server = rollout.model_server.url
    # Not set yet: the champion serves alone, and asking for the challenger gets it.
    assert served(server)["challenger"] is None
    alone = lean_call(server, role="challenger")
    assert (alone.headers[MODEL_VERSION_HEADER], alone.headers[MODEL_ROLE_HEADER]) == (
        "1",
        "champion",
    )
    # An alias not set yet is no error: nothing refused or failed was counted for it.
    series = metric_series(scrape(server), "model_reloads_total")
    assert not [
        s for s in series if s["role"] == "challenger" and s["result"] not in ("swapped", "removed")
    ], series
    swapped, removed = (rollout.reloads("challenger", r) for r in ("swapped", "removed"))

    rollout.registry.set_alias("challenger", "2")
    procs.wait_until(
        lambda: served_versions(server) == ("1", "2"),
        RELOAD_DEADLINE,
        "the challenger loaded within the poll interval and a fetch",
    )
    answer = lean_call(server, role="challenger")
    assert (answer.headers[MODEL_VERSION_HEADER], answer.headers[MODEL_ROLE_HEADER]) == (
        "2",
        "challenger",
    )
    assert lean_call(server).headers[MODEL_VERSION_HEADER] == "1"  # no header: the champion
    assert served(server)["challenger"]["uri"] == CHALLENGER_URI
    assert rollout.reloads("challenger", "swapped") == swapped + 1

    rollout.registry.delete_alias("challenger")
    procs.wait_until(
        lambda: served_versions(server) == ("1", None),
        RELOAD_DEADLINE,
        "the challenger removed once its alias was deleted",
    )
    assert rollout.reloads("challenger", "removed") == removed + 1
    gone = lean_call(server, role="challenger")
    assert gone.headers[MODEL_ROLE_HEADER] == "champion"
    assert any(
        "challenger alias @challenger removed" in line["msg"]
        for line in log_lines(rollout.model_server)
    )


# --- 4. no polling: SIGHUP and POST /admin/reload ---------------------------------------
def fetching(pid: int) -> bool:
    """A reload's fetch-and-gate child (model.candidate) is running under the server."""
    for child in procs.process_tree([pid])[1:]:
        try:
            if "model.candidate" in child.cmdline():
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def hold(seconds: float, check: Callable[[], None]) -> None:
    """`check` keeps holding for `seconds` (asked every 50 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(0.05)


def test_without_polling_only_sighup_or_admin_reload_moves_the_champion(
    store: Store, tmp_path: Path
) -> None:
    # A registry of this test's own: the module's model server polls the shared one.
    registry = store.registry.copy(tmp_path / "mlflow")
    model = replace(store.first, tracking_uri=registry.tracking_uri, workdir=registry.workdir)
    server = procs.model_server(
        model,
        tmp_path,
        LUNGWATCH_MODEL_SERVER_RELOAD_INTERVAL_SECONDS="0",
        LUNGWATCH_MODEL_SERVER_CHALLENGER_URI=CHALLENGER_URI,
    ).start()
    try:
        assert served_versions(server.url) == ("1", None)
        registry.set_alias("champion", "2")

        def unchanged() -> None:
            # No reload even begins: it would start a model.candidate child at once.
            assert not fetching(server.pid), "a reload started with no signal"
            assert served_versions(server.url) == ("1", None)

        hold(3.0, unchanged)
        assert metric_series(scrape(server.url), "model_reloads_total") == []

        server.signal(signal.SIGHUP)
        procs.wait_until(
            lambda: served_versions(server.url) == ("2", None),
            FETCH_SECONDS,
            "champion 2 served after SIGHUP",
        )
        text = scrape(server.url)
        assert metric_value(text, "model_reloads_total", role="champion", result="swapped") == 1

        registry.set_alias("champion", "1")
        hold(1.0, lambda: None if served_versions(server.url) == ("2", None) else pytest.fail(
            "the champion moved with no signal"
        ))  # fmt: skip
        answer = httpx.post(f"{server.url}/admin/reload", timeout=FETCH_SECONDS)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # Answered once the check is done: the new champion is already serving.
        assert body["results"] == {"champion": "swapped", "challenger": "unchanged"}, body
        assert (body["version"], body["role"], body["challenger"]) == ("1", "champion", None)
        assert served_versions(server.url) == ("1", None)
        assert lean_call(server.url).headers[MODEL_VERSION_HEADER] == "1"

        again = httpx.post(f"{server.url}/admin/reload", timeout=FETCH_SECONDS).json()
        assert again["results"] == {"champion": "unchanged", "challenger": "unchanged"}
        text = scrape(server.url)
        assert metric_value(text, "model_reloads_total", role="champion", result="swapped") == 2
        assert not fetching(server.pid)
    finally:
        server.stop()
