"""Fixtures that start the real system on free ports: model, model server, gateway, Prometheus.

`stack` is shared by the whole session (treat its counters as moving: compare deltas or
use `spawn` for processes of your own); `spawn` starts processes that a test owns and stops
them when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools import procs
from tests.support.otlp import OtlpReceiver


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass
class Stack:
    model: procs.TrainedModel
    model_server: procs.ManagedProcess
    gateway: procs.ManagedProcess
    prometheus: procs.ManagedProcess
    otlp: OtlpReceiver
    workdir: Path

    @property
    def gateway_url(self) -> str:
        return self.gateway.url

    @property
    def model_server_url(self) -> str:
        return self.model_server.url

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url

    def wait_for_scrape(self, job: str = "lungwatch-gateway", timeout: float = 15.0) -> None:
        """Block until Prometheus has scraped `job` after this moment."""
        import time

        since = time.time()
        procs.wait_until(
            lambda: procs.scraped_since(self.prometheus_url, job, since),
            timeout,
            f"a Prometheus scrape of {job}",
        )


@pytest.fixture(scope="session")
def integration_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("integration")


@pytest.fixture(scope="session")
def trained_model(integration_dir: Path) -> procs.TrainedModel:
    return procs.train_model(integration_dir / "mlflow")


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def stack(
    integration_dir: Path, trained_model: procs.TrainedModel, otlp_receiver: OtlpReceiver
) -> Iterator[Stack]:
    logs = integration_dir / "logs"
    logs.mkdir(exist_ok=True)
    otlp = procs.otlp_env(otlp_receiver.endpoint)
    model_server = procs.model_server(trained_model, logs, extra_env=otlp).start()
    gateway = procs.gateway(model_server.url, logs, extra_env=otlp).start()
    hostport = {p.name: p.url.removeprefix("http://") for p in (model_server, gateway)}
    prometheus = procs.prometheus(
        integration_dir / "prometheus",
        {
            "lungwatch-gateway": [hostport["gateway"]],
            "lungwatch-model-server": [hostport["model-server"]],
        },
    ).start()
    stack = Stack(trained_model, model_server, gateway, prometheus, otlp_receiver, integration_dir)
    yield stack
    for process in (prometheus, gateway, model_server):
        process.stop()


Spawn = Callable[[procs.ManagedProcess], procs.ManagedProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start processes owned by one test; all are stopped when it ends."""
    started: list[procs.ManagedProcess] = []

    def start(process: procs.ManagedProcess) -> procs.ManagedProcess:
        started.append(process)
        return process.start()

    yield start
    for process in reversed(started):
        # Whatever the test checks is checked by now; a gateway whose OTLP backend the test
        # stopped or black-holed would otherwise spend 15 s retrying its final export.
        process.stop(timeout=5)
