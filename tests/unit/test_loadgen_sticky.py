"""loadgen --sticky-keys over a mock canary gateway (no network): a fixed, seeded set of keys, one
per request in the stickiness header (or the one --sticky-header names), the request sequence
unchanged, and the report saying which keys stayed on one version."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadgen import cli
from loadgen.payloads import (
    STICKY_HEADER,
    Mix,
    PayloadFactory,
    RowSource,
    StickyKeys,
    load_rows,
)
from loadgen.runner import RunPlan, run


@dataclass
class CanaryGateway:
    """Sends a key to the challenger ("4") when its hash falls under `percent`, else to the
    champion ("3"); from call `promote_at` on, everything is "4" (a promotion mid-run)."""

    header: str = STICKY_HEADER
    percent: int = 30
    promote_at: int = 0
    calls: int = 0
    keys_seen: list[str | None] = field(default_factory=list)
    versions: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        key = request.headers.get(self.header)
        self.keys_seen.append(key)
        if key is None:
            version = "3"
        elif self.promote_at and self.calls >= self.promote_at:
            version = "4"
        else:
            version = "4" if zlib.crc32(key.encode()) % 100 < self.percent else "3"
        if key is not None:
            self.versions[key].add(version)
        return httpx.Response(200, json={"prediction": 0, "model_version": version})


def _main(
    monkeypatch: pytest.MonkeyPatch, fake: CanaryGateway, tmp_path: Path, *argv: str
) -> dict[str, Any]:
    real_client = httpx.AsyncClient

    def client_with_mock(**kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(fake.handler)
        return real_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client_with_mock)
    out = tmp_path / "r.json"
    assert cli.main(["--rate", "1000", "--quiet", "--json", str(out), *argv]) == cli.EXIT_OK
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_keys_are_fixed_by_the_seed_and_distinct() -> None:
    keys = StickyKeys(50, seed=7)
    assert len(set(keys.keys)) == 50
    assert StickyKeys(50, seed=7).keys == keys.keys
    assert StickyKeys(50, seed=8).keys != keys.keys
    assert StickyKeys(3, seed=None).keys != StickyKeys(3, seed=None).keys
    assert all(len(k.encode()) <= 256 for k in keys.keys)  # the gateway refuses longer ones


def test_draws_are_reproducible_and_cover_every_key() -> None:
    a, b = StickyKeys(5, seed=1), StickyKeys(5, seed=1)
    draws = [a.draw() for _ in range(500)]
    assert draws == [b.draw() for _ in range(500)]
    assert set(draws) == set(a.keys)
    with pytest.raises(ValueError):
        StickyKeys(0, seed=1)


def test_keys_leave_the_request_sequence_as_it_was() -> None:
    rows, mix = RowSource(load_rows()), Mix({"empty_body": 0.1}, batch_share=0.2)
    plain = PayloadFactory(rows, mix, random.Random(3))
    keyed = PayloadFactory(rows, mix, random.Random(3), StickyKeys(4, seed=3))
    for _ in range(200):
        a, b = plain.next(), keyed.next()
        assert (a.kind, a.body, a.labels) == (b.kind, b.body, b.labels)
        assert a.sticky_key is None and b.sticky_key in keyed.sticky.keys  # type: ignore[union-attr]


def test_every_request_carries_one_of_the_keys_in_the_header() -> None:
    fake = CanaryGateway()
    sticky = StickyKeys(8, seed=4)
    factory = PayloadFactory(RowSource(load_rows()), Mix({}), random.Random(4), sticky)
    plan = RunPlan(offsets=(i * 0.001 for i in itertools.count()), requests=200)
    recorder = asyncio.run(
        run("http://gw", plan, factory, progress=None, transport=httpx.MockTransport(fake.handler))
    )
    assert len(fake.keys_seen) == 200
    assert set(fake.keys_seen) == set(sticky.keys)
    # What loadgen saw per key is what the gateway decided per key: one version each.
    assert dict(recorder.versions_by_sticky_key) == dict(fake.versions)
    assert all(len(v) == 1 for v in recorder.versions_by_sticky_key.values())


def test_without_keys_no_header_is_sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = CanaryGateway()
    report = _main(monkeypatch, fake, tmp_path, "--requests", "20")
    assert fake.keys_seen == [None] * 20
    assert "sticky" not in report


def test_main_reports_the_keys_and_their_versions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = CanaryGateway()
    report = _main(
        monkeypatch, fake, tmp_path, "--requests", "300", "--sticky-keys", "20", "--seed", "9"
    )
    assert set(fake.keys_seen) == set(StickyKeys(20, seed=9).keys)
    sticky = report["sticky"]
    on_challenger = sum(v == {"4"} for v in fake.versions.values())
    assert sticky == {
        "header": STICKY_HEADER,
        "keys": 20,
        "keys_answered": 20,
        "keys_split": 0,
        "keys_by_model_version": {"3": 20 - on_challenger, "4": on_challenger},
    }
    assert 0 < on_challenger < 20
    assert report["profile"].endswith(", 20 sticky keys")
    assert "sticky      20 keys in x-lungwatch-sticky-key: 20 answered, 0 by more" in (
        capsys.readouterr().out
    )


def test_a_key_moved_to_another_version_is_split(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = CanaryGateway(promote_at=100)
    report = _main(
        monkeypatch, fake, tmp_path, "--requests", "300", "--sticky-keys", "10", "--seed", "9"
    )
    sticky = report["sticky"]
    assert sticky["keys_split"] == sum(len(v) > 1 for v in fake.versions.values()) > 0


def test_another_header_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = CanaryGateway(header="x-patient")
    report = _main(
        monkeypatch, fake, tmp_path, "--requests", "20", "--sticky-keys", "2",
        "--sticky-header", "X-Patient",
    )  # fmt: skip
    assert None not in fake.keys_seen
    assert report["sticky"]["header"] == "x-patient"


@pytest.mark.parametrize(
    "argv",
    [
        ["--sticky-keys", "-1"],
        ["--sticky-keys", "x"],
        ["--sticky-keys", str(cli.MAX_STICKY_KEYS + 1)],
        ["--sticky-header", "x-key"],  # without --sticky-keys it would do nothing
        ["--sticky-keys", "3", "--sticky-header", "bad header"],
        ["--sticky-keys", "3", "--sticky-header", "x:y"],
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli.resolve(argv)
    assert excinfo.value.code == cli.EXIT_USAGE
