"""Signed prediction ids (verified by any holder of the key) and the duplicate check of /feedback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import struct

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from api.feedback_store import AnsweredIds, LocalAnswered
from api.guard import key_id
from api.prediction_ids import TOKEN_BYTES, InvalidPredictionId, PredictionIds
from contract.settings import GatewaySettings
from telemetry import build_telemetry

KEY = b"k" * 32
OTHER = b"o" * 32


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reason(ids: PredictionIds, token: str) -> str:
    with pytest.raises(InvalidPredictionId) as refused:
        ids.verify(token)
    return refused.value.reason


def test_an_id_issued_by_one_replica_verifies_on_another_with_the_same_key() -> None:
    clock = Clock()
    issuer, other = PredictionIds(KEY, clock=clock), PredictionIds(KEY, clock=clock)
    token = issuer.issue(2, "17")
    # The shape /feedback's schema has always accepted: lowercase hex, at most 64 digits.
    assert len(token) == 2 * TOKEN_BYTES == 64 and token == token.lower()
    verified = other.verify(token)
    assert (verified.predicted, verified.model_version) == (2, "17")
    assert verified.issued_at == int(clock.now)
    assert issuer.issue(2, "17") != token  # a random part: equal predictions, distinct ids


def test_an_id_names_the_api_key_that_asked_and_the_mac_covers_it() -> None:
    ids = PredictionIds(KEY)
    alice, bob = key_id("alice-key"), key_id("bob-key")
    verified = ids.verify(ids.issue(1, "3", alice))
    assert verified.issued_to(alice) and not verified.issued_to(bob)
    unbound = ids.verify(ids.issue(1, "3"))  # API keys off
    assert unbound.caller is None and not unbound.issued_to(alice)
    token = ids.issue(1, "3", alice)
    caller_at = 2 * 16  # hex offset of the caller bytes
    swapped = token[:caller_at] + bob[:8] + token[caller_at + 8 :]
    assert reason(ids, swapped) == "forged"  # claiming another key breaks the MAC


def test_format_1_ids_still_verify_as_bound_to_no_key() -> None:
    # Issued before ids named their caller: 16-byte body, 16-byte MAC, same key.
    clock = Clock()
    body = struct.pack(">B8sIBH", 1, b"r" * 8, int(clock.now), 2, 5)
    token = (body + hmac.new(KEY, body, hashlib.sha256).digest()[:16]).hex()
    verified = PredictionIds(KEY, clock=clock).verify(token)
    assert (verified.predicted, verified.model_version, verified.caller) == (2, "5", None)
    assert reason(PredictionIds(OTHER, clock=clock), token) == "forged"


def test_format_2_ids_still_verify_without_probabilities() -> None:
    # Issued before ids carried the answered probabilities (issue 24): 8 random bytes.
    clock = Clock()
    body = struct.pack(">B8sIBH4s", 2, b"r" * 8, int(clock.now), 1, 4, bytes.fromhex("a1b2c3d4"))
    token = (body + hmac.new(KEY, body, hashlib.sha256).digest()[:12]).hex()
    verified = PredictionIds(KEY, clock=clock).verify(token)
    assert (verified.predicted, verified.model_version, verified.caller) == (1, "4", "a1b2c3d4")
    assert verified.probabilities is None


def test_an_id_carries_the_answered_probabilities_to_a_255th() -> None:
    ids = PredictionIds(KEY)
    answered = (0.8123, 0.15, 0.0377)
    verified = ids.verify(ids.issue(0, "3", key_id("alice-key"), answered))
    assert verified.probabilities is not None
    assert all(abs(a - b) <= 1 / 255 for a, b in zip(verified.probabilities, answered, strict=True))
    assert verified.issued_to(key_id("alice-key"))


def test_a_version_that_is_not_a_registry_number_is_carried_as_unknown() -> None:
    ids = PredictionIds(KEY)
    assert ids.verify(ids.issue(0, "runs:/abc/model")).model_version is None
    assert ids.verify(ids.issue(1, None)).model_version is None


def test_forged_malformed_and_expired_ids_are_refused_with_their_reason() -> None:
    clock = Clock()
    ids = PredictionIds(KEY, ttl_seconds=60, clock=clock)
    token = ids.issue(1, "3")
    assert reason(PredictionIds(OTHER, clock=clock), token) == "forged"
    flipped = token[:20] + ("0" if token[20] != "0" else "1") + token[21:]  # the class byte
    assert reason(ids, flipped) == "forged"
    for bad in ("abc123", token[:-2], token + "00", "zz" * 32, "04" + token[2:]):
        assert reason(ids, bad) == "malformed", bad
    clock.now += 59
    assert ids.verify(token).remaining(clock.now) == pytest.approx(1)
    clock.now += 1
    assert reason(ids, token) == "expired"


def test_rotation_signs_with_the_new_key_and_still_accepts_the_previous_one() -> None:
    old = PredictionIds(OTHER)
    token = old.issue(0, "1")
    rotated = PredictionIds(KEY, [OTHER])
    assert rotated.verify(token).predicted == 0
    fresh = rotated.issue(1, "1")
    assert PredictionIds(KEY).verify(fresh).predicted == 1  # signed with the new key
    assert reason(PredictionIds(KEY), token) == "forged"  # once the old key is dropped


def test_without_a_key_ids_verify_only_in_the_issuing_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "lungwatch.prediction_ids"):
        one = PredictionIds.from_settings(GatewaySettings())
    assert "PREDICTION_ID_KEY is not set" in caplog.text and not one.shared_key
    token = one.issue(1, "1")
    assert one.verify(token).predicted == 1
    assert reason(PredictionIds.from_settings(GatewaySettings()), token) == "forged"
    shared = GatewaySettings(prediction_id_key="s" * 20, feedback_ttl_seconds=5)
    assert PredictionIds.from_settings(shared).ttl_seconds == 5
    assert PredictionIds.from_settings(shared).verify(
        PredictionIds.from_settings(shared).issue(2, "4")
    )


def test_settings_refuse_a_shared_store_without_a_shared_key_and_short_keys() -> None:
    with pytest.raises(ValueError, match="PREDICTION_ID_KEY is not"):
        GatewaySettings(feedback_redis_url="redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="at least 16"):
        GatewaySettings(prediction_id_key="short")
    GatewaySettings(feedback_redis_url="redis://127.0.0.1:6379/0", prediction_id_key="x" * 16)


def test_local_answered_ids_are_bounded_and_forget_expired_ones() -> None:
    clock = Clock(0)
    answered = LocalAnswered(max_size=3, clock=clock)
    assert answered.claim("a", 10) and not answered.claim("a", 10)
    assert answered.claim("b", 100) and answered.claim("c", 100)
    clock.now = 11  # "a" expired: dropped before the count bound is applied
    assert answered.claim("d", 100) and len(answered) == 3
    assert answered.claim("e", 100) and len(answered) == 3  # the oldest ("b") went
    assert answered.claim("b", 100)


class ScriptedStore:
    """Stands in for Redis in this unit test (tests/integration uses a real redis-server)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.down = False
        self.calls = 0

    async def claim(self, token: str, ttl_seconds: float) -> bool:
        self.calls += 1
        if self.down:
            raise ConnectionError("refused")
        first = token not in self.keys
        self.keys.add(token)
        return first

    async def aclose(self) -> None:
        pass


def _gauge(reader: InMemoryMetricReader, name: str) -> list[float | None]:
    data = reader.get_metrics_data()
    return [
        getattr(point, "value", None)
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_shared_store_refuses_another_replicas_duplicate_and_degrades_when_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(0)
    store = ScriptedStore()
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    one, two = (
        AnsweredIds(build_telemetry("t", metric_readers=[r]), store, retry_seconds=5, clock=clock)
        for r in readers
    )

    async def scenario() -> None:
        assert await one.claim("id-1", 100)
        assert not await two.claim("id-1", 100)  # another replica, same store
        store.down = True
        with caplog.at_level(logging.INFO, "lungwatch.feedback_store"):
            assert await one.claim("id-2", 100)  # degraded: accepted on local evidence
            assert await one.claim("id-3", 100)  # inside retry_seconds: the store is left alone
            assert not await one.claim("id-2", 100)  # still refused on this replica
            assert store.calls == 3
            assert _gauge(readers[0], "gateway_feedback_store_up") == [0]
            assert _gauge(readers[0], "gateway_feedback_store_fallbacks_total") == [2]
            store.down = False
            clock.now = 6
            assert await one.claim("id-4", 100)
        assert _gauge(readers[0], "gateway_feedback_store_up") == [1]
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2 and "unavailable" in lines[0] and "again" in lines[1]

    asyncio.run(scenario())


def test_no_shared_store_means_no_store_gauge() -> None:
    reader = InMemoryMetricReader()
    answered = AnsweredIds(build_telemetry("t", metric_readers=[reader]))
    assert asyncio.run(answered.claim("x", 1e12))
    assert _gauge(reader, "gateway_feedback_store_up") == []
