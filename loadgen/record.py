"""`--record FILE`: one JSON line per answered (or failed) prediction request, for tests to join
with what the system did meanwhile (which version was champion when, which key went where).

A `ResponseHook`, first in the plan so no other hook's awaits sit between an answer and its
line. A line is ~125 bytes and costs ~3 us to format here (`json.dumps`; an httpx call costs
the generator hundreds of times that), written into a 1 MiB buffered file: one write syscall
per ~8000 requests, and memory bounded however long the run.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import IO

import httpx

from loadgen.stats import Outcome

BUFFER_BYTES = 1 << 20


def format_line(
    sent: float, done: float, status: int | None, model_version: str | None, sticky_key: str | None
) -> str:
    """One record: `sent`/`done` wall-clock epoch seconds, `status` the HTTP status (null: no
    answer), `model_version` of a 200 answer (null otherwise) and the request's `sticky_key`."""
    record = {
        "sent": sent,
        "done": done,
        "status": status,
        "model_version": model_version,
        "sticky_key": sticky_key,
    }
    return json.dumps(record) + "\n"


class RequestLog:
    """Writes a line per request as it completes (requests dropped unsent have none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Opened now, so an unwritable path stops the command before any traffic.
        self._file: IO[str] | None = path.open("w", encoding="utf-8", buffering=BUFFER_BYTES)
        self._offset: float | None = None  # wall clock minus loop clock
        self.lines = 0

    async def __call__(self, client: httpx.AsyncClient, outcome: Outcome) -> None:
        if self._file is None:
            return
        if self._offset is None:
            # Outcomes carry loop (monotonic) times; one offset read at the first answer maps
            # them to the wall clock, so a clock step mid-run cannot reorder the lines' times.
            self._offset = time.time() - asyncio.get_running_loop().time()
        offset = self._offset
        self._file.write(
            format_line(
                outcome.sent + offset,
                outcome.finished + offset,
                outcome.status,
                outcome.model_version,
                outcome.spec.sticky_key,
            )
        )
        self.lines += 1

    def close(self) -> None:
        """Flushes what is buffered; called after the run, interrupted or not."""
        if self._file is not None:
            self._file.close()
            self._file = None
