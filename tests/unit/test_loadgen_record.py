"""loadgen --record over a mock gateway (no network): one JSON line per request sent, with its
wall-clock send and answer times, status, version and sticky key, each matching what the
gateway saw; failures recorded with no status; an unwritable file stops the run before traffic."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadgen import cli
from loadgen.payloads import STICKY_HEADER, RequestSpec
from loadgen.record import RequestLog, format_line
from loadgen.stats import Outcome

FIELDS = {"sent", "done", "status", "model_version", "sticky_key"}


@dataclass
class Gateway:
    """Answers 200 with a version taken from the key (or "3"), 503 every fourth call, and a
    refused connection every `refuse_every` calls; remembers what each call got, in order."""

    refuse_every: int = 0
    calls: int = 0
    seen: list[tuple[float, str | None, int | None, str | None]] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        key = request.headers.get(STICKY_HEADER)
        now = time.time()
        if self.refuse_every and self.calls % self.refuse_every == 0:
            self.seen.append((now, key, None, None))
            raise httpx.ConnectError("refused", request=request)
        if self.calls % 4 == 0:
            self.seen.append((now, key, 503, None))
            return httpx.Response(503, json={"error": "model_unavailable"})
        version = "3" if key is None else str(int(key[-1], 16) % 2 + 3)
        self.seen.append((now, key, 200, version))
        return httpx.Response(200, json={"prediction": 1, "model_version": version})


def _main(
    monkeypatch: pytest.MonkeyPatch, fake: Gateway, tmp_path: Path, *argv: str
) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    real_client = httpx.AsyncClient

    def client_with_mock(**kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(fake.handler)
        return real_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client_with_mock)
    out, record = tmp_path / "r.json", tmp_path / "requests.jsonl"
    code = cli.main(["--quiet", "--json", str(out), "--record", str(record), *argv])
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return code, json.loads(out.read_text()), lines


def test_format_line_is_one_json_object_per_line() -> None:
    line = format_line(1767225600.123456, 1767225600.125, 200, "12", "k1")
    assert line.endswith("}\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "sent": 1767225600.123456,
        "done": 1767225600.125,
        "status": 200,
        "model_version": "12",
        "sticky_key": "k1",
    }
    assert json.loads(format_line(1.0, 2.0, None, None, None))["status"] is None
    # A key is the caller's text: quoted, never pasted.
    assert json.loads(format_line(1.0, 2.0, 200, None, 'a"b\\'))["sticky_key"] == 'a"b\\'


def test_one_line_per_request_matching_what_the_gateway_answered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = Gateway()
    before = time.time()
    code, report, lines = _main(
        monkeypatch, fake, tmp_path, "--rate", "500", "--requests", "120", "--sticky-keys", "6"
    )
    after = time.time()
    assert code == cli.EXIT_OK  # 503s fail no check unless an SLO is asked for
    assert len(lines) == 120 == report["sent"] == report["record"]["lines"]
    assert all(set(line) == FIELDS for line in lines)
    assert all(before <= line["sent"] <= line["done"] <= after for line in lines)
    # The lines are written as answers arrive; sorted by send time they are the gateway's
    # calls in order (the mock answers each call before the next is sent).
    by_send = sorted(lines, key=lambda line: line["sent"])
    got = [(line["sticky_key"], line["status"], line["model_version"]) for line in by_send]
    assert got == [(key, status, version) for _, key, status, version in fake.seen]
    for line, (called_at, *_) in zip(by_send, fake.seen, strict=True):
        assert line["sent"] <= called_at + 0.001 and called_at <= line["done"] + 0.001
    statuses = [line["status"] for line in lines]
    assert statuses.count(503) == 30 and statuses.count(200) == 90
    # Every key answered by one version only: what a stickiness test reads off the file.
    versions: dict[str, set[str]] = {}
    for line in lines:
        if line["status"] == 200:
            versions.setdefault(line["sticky_key"], set()).add(line["model_version"])
    assert len(versions) == 6 and all(len(v) == 1 for v in versions.values())
    answered = {v: sum(line["model_version"] == v for line in lines) for v in ("3", "4")}
    assert report["by_model_version"] == {v: n for v, n in answered.items() if n}


def test_requests_without_an_answer_have_a_line_with_no_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = Gateway(refuse_every=5)
    _, report, lines = _main(monkeypatch, fake, tmp_path, "--rate", "500", "--requests", "50")
    refused = [line for line in lines if line["status"] is None]
    assert len(refused) == 10 == report["connection_errors"]
    assert all(line["model_version"] is None and line["sticky_key"] is None for line in refused)
    assert all(line["done"] >= line["sent"] for line in refused)


def test_dropped_requests_were_never_sent_and_have_no_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)  # the in-flight cap of 1 stays full meanwhile
        return httpx.Response(200, json={"prediction": 0, "model_version": "3"})

    fake = Gateway()
    fake.handler = slow  # type: ignore[assignment,method-assign]
    _, report, lines = _main(
        monkeypatch, fake, tmp_path, "--rate", "500", "--duration", "0.2s",
        "--max-in-flight", "1", "--on-full", "drop",
    )  # fmt: skip
    assert report["dropped"] > 0 and report["sent"] > 0
    assert report["sent"] + report["dropped"] == 100
    assert len(lines) == report["sent"]


def test_an_unwritable_record_file_stops_the_run_before_any_traffic(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = Gateway()
    real_client = httpx.AsyncClient

    def client_with_mock(**kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(fake.handler)
        return real_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client_with_mock)
    missing = tmp_path / "no" / "such" / "dir" / "r.jsonl"
    assert cli.main(["--quiet", "--requests", "5", "--record", str(missing)]) == cli.EXIT_USAGE
    assert fake.calls == 0
    assert "cannot write the record file" in capsys.readouterr().err


def test_close_flushes_and_a_closed_log_takes_no_more_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    log = RequestLog(path)
    spec = RequestSpec("features", "/predict", b"{}", (1,), sticky_key="k")
    outcome = Outcome(spec, 10.0, 10.0, 10.5, 200, None, (1,), None, "7")

    async def feed() -> None:
        await log(None, outcome)  # type: ignore[arg-type]

    asyncio.run(feed())
    assert path.read_text() == ""  # still in the buffer: no write syscall per request
    log.close()
    (line,) = (json.loads(text) for text in path.read_text().splitlines())
    assert line["done"] - line["sent"] == pytest.approx(0.5)
    assert abs(line["done"] - time.time()) < 3600 * 24 * 365  # epoch seconds, not loop time
    asyncio.run(feed())
    log.close()
    assert len(path.read_text().splitlines()) == 1
