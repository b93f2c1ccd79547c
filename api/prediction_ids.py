"""Signed prediction ids: any gateway replica holding the key verifies one alone, no lookup.

A prediction id is 64 hex digits (the shape `POST /feedback` has always accepted): 32 bytes of

    format 3 (1) | random id (6) | issued at, unix seconds (4) | predicted class (1)
    | model version (2) | P(Low), P(Medium) answered, in 255ths (1 + 1)
    | caller: the first 4 bytes of the API key's id (4)
    | HMAC-SHA256 of the 20 bytes before it, truncated to 12 bytes

so `/feedback` learns from the id itself what was predicted, with which probabilities
(P(High) is the rest; online calibration: Brier score and ECE, issue 24), by which model
version, when and for which API key, and the MAC proves this gateway fleet issued it: binding
feedback to the key that predicted needs no lookup and no state. The caller is four zero
bytes when API keys are off. Six random bytes, with the second and the rest of the body,
make two equal ids of one second a 1-in-2**48 event. Format 2 (eight random bytes, no
probabilities) and format 1 (before ids named their caller: a 16-byte body without it,
16-byte MAC) still verify until they expire, without probabilities; format 1 as an id bound
to no key. Signing uses the current key;
verification also accepts the previous one, so a key is rotated without refusing ids issued
just before. With no key configured each process draws a random one: ids then verify only on
the replica that issued them, until it restarts (the single-process default needs nothing more).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contract.settings import GATEWAY_DEFAULTS, GatewaySettings

log = logging.getLogger("lungwatch.prediction_ids")

FORMAT = 3
# format, random id, issued at, class, model version, P(Low) and P(Medium) in 255ths, caller
_BODY = struct.Struct(">B6sIBHBB4s")
_FORMAT_2 = 2
_BODY_2 = struct.Struct(">B8sIBH4s")  # no probabilities
# 96 bits: a forger needs ~2**96 online guesses, each also a rate-limited /feedback call.
_MAC_BYTES = 12
TOKEN_BYTES = _BODY.size + _MAC_BYTES  # 32 bytes, 64 hex digits
_FORMAT_1 = 1
_BODY_1 = struct.Struct(">B8sIBH")  # no caller; its MAC is 16 bytes
CALLER_BYTES = 4
# A key whose id starts with 8 zero hex digits (1 in 4 billion) would be taken for none.
NO_CALLER = bytes(CALLER_BYTES)
# Registry versions are small integers; anything else (a run URI, a path) is stored as this.
UNKNOWN_VERSION = 0xFFFF


class InvalidPredictionId(ValueError):
    """Why an id is refused: `malformed`, `forged` (no configured key signed it) or `expired`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedId:
    token: str
    predicted: int
    model_version: str | None
    issued_at: int
    expires_at: float
    # The first 8 hex digits of the id of the API key that made the prediction; None when
    # API keys were off (or the id predates binding).
    caller: str | None = None
    # (P(Low), P(Medium), P(High)) as answered, to 1/255; None for ids before format 3.
    probabilities: tuple[float, float, float] | None = None

    def issued_to(self, api_key_id: str) -> bool:
        """Whether the API key with this id (api.guard.key_id) made the prediction."""
        return self.caller is not None and api_key_id[: 2 * CALLER_BYTES] == self.caller

    def remaining(self, now: float) -> float:
        return self.expires_at - now


def _version_code(model_version: str | None) -> int:
    if model_version is not None and model_version.isdigit() and int(model_version) < 0xFFFF:
        return int(model_version)
    return UNKNOWN_VERSION


def _255ths(probability: float) -> int:
    return min(255, max(0, round(probability * 255)))


class PredictionIds:
    """Issues and verifies prediction ids; `clock` is wall time (ids travel between hosts)."""

    def __init__(
        self,
        key: bytes | None = None,
        previous_keys: Sequence[bytes] = (),
        ttl_seconds: float = GATEWAY_DEFAULTS.feedback_ttl_seconds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shared_key = key is not None
        self._keys = [key or secrets.token_bytes(32), *previous_keys]
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> PredictionIds:
        key, previous = settings.prediction_id_key, settings.prediction_id_previous_key
        if not key:
            log.warning(
                "LUNGWATCH_GATEWAY_PREDICTION_ID_KEY is not set: prediction ids verify only on "
                "this process, until it restarts"
            )
        return cls(
            key.encode() if key else None,
            [previous.encode()] if previous else [],
            ttl_seconds=settings.feedback_ttl_seconds,
        )

    def _mac(self, key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()

    def issue(
        self,
        predicted: int,
        model_version: str | None,
        api_key_id: str | None = None,
        probabilities: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> str:
        """An id for one predicted row, bound to the API key (its id) that asked, if any."""
        caller = bytes.fromhex(api_key_id[: 2 * CALLER_BYTES]) if api_key_id else NO_CALLER
        body = _BODY.pack(
            FORMAT,
            os.urandom(6),
            int(self._clock()),
            predicted,
            _version_code(model_version),
            _255ths(probabilities[0]),
            _255ths(probabilities[1]),
            caller,
        )
        return (body + self._mac(self._keys[0], body)[:_MAC_BYTES]).hex()

    def verify(self, token: str) -> VerifiedId:
        """The id's content, or InvalidPredictionId saying why it is refused."""
        try:
            raw = bytes.fromhex(token)
        except ValueError:
            raw = b""
        layout = (
            {FORMAT: _BODY, _FORMAT_2: _BODY_2, _FORMAT_1: _BODY_1}.get(raw[0]) if raw else None
        )
        if len(raw) != TOKEN_BYTES or layout is None:
            raise InvalidPredictionId(
                "malformed",
                f"a prediction id is {2 * TOKEN_BYTES} hex digits as /predict issued it",
            )
        body, mac = raw[: layout.size], raw[layout.size :]
        # compare_digest: the time taken must not tell a forger how many bytes matched.
        if not any(
            hmac.compare_digest(mac, self._mac(key, body)[: len(mac)]) for key in self._keys
        ):
            raise InvalidPredictionId(
                "forged",
                "this prediction id was not issued by this service (or its signing key was "
                "rotated out)",
            )
        _, _, issued_at, predicted, version, *rest = layout.unpack(body)
        caller = rest[-1] if rest else NO_CALLER
        probabilities = None
        if layout is _BODY:
            p_low, p_medium = rest[0] / 255, rest[1] / 255
            probabilities = (p_low, p_medium, max(0.0, 1.0 - p_low - p_medium))
        if predicted > 2:
            raise InvalidPredictionId("malformed", "this prediction id names no class")
        expires_at = issued_at + self.ttl_seconds
        if self._clock() >= expires_at:
            raise InvalidPredictionId(
                "expired",
                f"this prediction is older than {self.ttl_seconds:g}s and accepts no more feedback",
            )
        return VerifiedId(
            token=token,
            predicted=predicted,
            model_version=None if version == UNKNOWN_VERSION else str(version),
            issued_at=issued_at,
            expires_at=expires_at,
            caller=None if caller == NO_CALLER else caller.hex(),
            probabilities=probabilities,
        )
