"""Signed prediction ids: any gateway replica holding the key verifies one alone, no lookup.

A prediction id is 64 hex digits (the shape `POST /feedback` has always accepted): 32 bytes of

    format (1) | random id (8) | issued at, unix seconds (4) | predicted class (1)
    | model version (2) | HMAC-SHA256 of the 16 bytes before it, truncated to 16 bytes

so `/feedback` learns from the id itself what was predicted, by which model version and when,
and the MAC proves this gateway fleet issued it. Signing uses the current key; verification
also accepts the previous one, so a key is rotated without refusing ids issued just before.
With no key configured each process draws a random one: ids then verify only on the replica
that issued them, until it restarts (the single-process default needs nothing more).
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

FORMAT = 1
_BODY = struct.Struct(">B8sIBH")  # format, random id, issued at, class, model version
_MAC_BYTES = 16
TOKEN_BYTES = _BODY.size + _MAC_BYTES  # 32 bytes, 64 hex digits
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

    def remaining(self, now: float) -> float:
        return self.expires_at - now


def _version_code(model_version: str | None) -> int:
    if model_version is not None and model_version.isdigit() and int(model_version) < 0xFFFF:
        return int(model_version)
    return UNKNOWN_VERSION


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
        return hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, predicted: int, model_version: str | None) -> str:
        body = _BODY.pack(
            FORMAT, os.urandom(8), int(self._clock()), predicted, _version_code(model_version)
        )
        return (body + self._mac(self._keys[0], body)).hex()

    def verify(self, token: str) -> VerifiedId:
        """The id's content, or InvalidPredictionId saying why it is refused."""
        try:
            raw = bytes.fromhex(token)
        except ValueError:
            raw = b""
        if len(raw) != TOKEN_BYTES or raw[0] != FORMAT:
            raise InvalidPredictionId(
                "malformed",
                f"a prediction id is {2 * TOKEN_BYTES} hex digits as /predict issued it",
            )
        body, mac = raw[: _BODY.size], raw[_BODY.size :]
        # compare_digest: the time taken must not tell a forger how many bytes matched.
        if not any(hmac.compare_digest(mac, self._mac(key, body)) for key in self._keys):
            raise InvalidPredictionId(
                "forged",
                "this prediction id was not issued by this service (or its signing key was "
                "rotated out)",
            )
        _, _, issued_at, predicted, version = _BODY.unpack(body)
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
        )
