"""loadgen command line: durations, profiles, invalid shares, mode resolution and SLO checks."""

from __future__ import annotations

import argparse
import itertools
import json

import httpx
import pytest

from loadgen import cli
from loadgen.payloads import INVALID_KINDS


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("2m", 120), ("500ms", 0.5), ("1h", 3600), ("1.5", 1.5), (" 3s ", 3)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert cli.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-1s", "0", "10 minutes", "1d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_duration(text)


def test_parse_steps_and_ramp() -> None:
    assert cli.parse_steps("10:20s,0:5s,50:1m") == [(10, 20), (0, 5), (50, 60)]
    assert cli.parse_ramp("5:50") == (5, 50)
    for bad in ("10", "10:x", "-1:5s"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_steps(bad)
    for bad in ("5", "a:b", "0:0", "-1:3"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_ramp(bad)


def test_parse_invalid() -> None:
    spread = cli.parse_invalid("0.25")
    assert set(spread) == set(INVALID_KINDS)
    assert sum(spread.values()) == pytest.approx(0.25)
    assert cli.parse_invalid("empty_body=0.1,wrong_count=0.05") == {
        "empty_body": 0.1,
        "wrong_count": 0.05,
    }
    for bad in ("1.5", "bogus=0.1", "empty_body=0.6,wrong_count=0.6"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_invalid(bad)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUNGWATCH_LOADGEN_URL", raising=False)
    options = cli.resolve([])
    assert options.args.url == cli.DEFAULT_URL
    assert options.mode == "open-loop"
    assert options.plan.offsets is not None
    assert len(list(options.plan.offsets)) == 100  # 10/s for 10 s


def test_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGWATCH_LOADGEN_URL", "http://gateway:8000")
    assert cli.resolve([]).args.url == "http://gateway:8000"
    assert cli.resolve(["--url", "http://other"]).args.url == "http://other"


def test_rate_with_requests_only_is_unbounded_until_n() -> None:
    options = cli.resolve(["--rate", "50", "--requests", "20"])
    assert options.plan.requests == 20
    assert options.profile == "50/s, at most 20 requests"
    assert options.plan.offsets is not None
    first = list(itertools.islice(options.plan.offsets, 200))
    assert len(first) == 200  # the schedule itself has no end; the limit stops the run


def test_ramp_steps_and_concurrency() -> None:
    ramp = cli.resolve(["--ramp", "0:20", "--duration", "10s"])
    assert ramp.plan.offsets is not None and len(list(ramp.plan.offsets)) == 100
    steps = cli.resolve(["--steps", "10:1s,20:1s"])
    assert steps.plan.offsets is not None and len(list(steps.plan.offsets)) == 30
    closed = cli.resolve(["--concurrency", "4", "--duration", "5s"])
    assert closed.mode == "closed-loop"
    assert (closed.plan.concurrency, closed.plan.duration) == (4, 5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "10", "--concurrency", "2"],
        ["--ramp", "1:10"],  # a ramp needs a duration
        ["--steps", "10:1s", "--duration", "5s"],
        ["--rate", "0"],
        ["--rate", "abc"],
        ["--invalid", "2"],
        ["--batch-share", "1.5"],
        ["--on-full", "explode"],
        ["--url", "localhost:8000"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli.resolve(argv)
    assert excinfo.value.code == cli.EXIT_USAGE


def test_slo_checks() -> None:
    args = cli.build_parser().parse_args(["--slo-p99", "0.5", "--slo-error-rate", "0.01"])
    report = {
        "valid_latency_seconds": {"count": 10, "p99": 0.4},
        "latency_seconds": {"count": 12, "p99": 0.9},
        "error_rate": 0.02,
    }
    checks = {c["name"]: c["ok"] for c in cli.slo_checks(report, args)}
    assert checks == {"p99": True, "error-rate": False}
    report["valid_latency_seconds"] = {"count": 10, "p99": 0.6}
    report["error_rate"] = 0.0
    checks = {c["name"]: c["ok"] for c in cli.slo_checks(report, args)}
    assert checks == {"p99": False, "error-rate": True}


def test_main_end_to_end_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole command over a mock transport: report printed, JSON and PNG written, exit code
    from the SLO."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        if not isinstance(body, dict) or "features" not in body and "patient" not in body:
            return httpx.Response(422, json={"error": "invalid", "message": "no"})
        return httpx.Response(200, json={"prediction": 2})

    real_client = httpx.AsyncClient

    def client_with_mock(**kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(handler)
        return real_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client_with_mock)
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["--rate", "200", "--requests", "40", "--quiet", "--invalid", "empty_body=0.5"]
    argv += ["--json", str(out_json), "--plot", str(out_png), "--slo-error-rate", "0.5"]
    argv += ["--seed", "1"]
    code = cli.main(argv)
    report = json.loads(out_json.read_text())
    assert report["sent"] == 40
    assert report["status_codes"]["200"] + report["status_codes"]["422"] == 40
    assert report["kinds"]["empty_body"]["422"] == report["kinds"]["empty_body"]["sent"]
    assert report["accuracy"]["labelled_rows"] == report["status_codes"]["200"]
    assert code == cli.EXIT_OK == report["exit_code"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p99.9" in capsys.readouterr().out
