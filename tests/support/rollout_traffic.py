"""Traffic and readings for the rollout tests: many predictions sent at once and answered in
order, rows to send, and the gateway's /metrics read as series (name and labels) and values."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from contract.dataset import read_rows
from contract.features import FEATURES

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Call:
    """One request to the gateway: `/predict` or `/predict/batch`, its JSON body, headers."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]

    @property
    def model_version(self) -> str | None:
        version = self.body.get("model_version")
        return version if isinstance(version, str) else None


def predict(row: Sequence[int], headers: dict[str, str] | None = None) -> Call:
    return Call("/predict", {"features": list(row)}, headers or {})


def predict_batch(rows: Sequence[Sequence[int]], headers: dict[str, str] | None = None) -> Call:
    return Call("/predict/batch", {"rows": [{"features": list(r)} for r in rows]}, headers or {})


def send_all(
    base_url: str, calls: Sequence[Call], concurrency: int = 8, timeout: float = 10.0
) -> list[Answer]:
    """Every call, `concurrency` at a time on keep-alive connections; answers in call order."""
    return asyncio.run(_send_all(base_url, calls, concurrency, timeout))


async def _send_all(
    base_url: str, calls: Sequence[Call], concurrency: int, timeout: float
) -> list[Answer]:
    answers: list[Answer | None] = [None] * len(calls)
    pending = iter(range(len(calls)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout, limits=limits, trust_env=False
    ) as client:

        async def worker() -> None:
            for index in pending:  # one shared iterator: each call is taken once
                call = calls[index]
                response = await client.post(call.path, json=call.body, headers=call.headers)
                body = response.json()
                answers[index] = Answer(
                    response.status_code, body if isinstance(body, dict) else {}
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [a for a in answers if a is not None]


def dataset_rows() -> list[list[int]]:
    """The dataset's 1,000 feature rows, in file order (152 distinct profiles)."""
    return [list(row.features) for row in read_rows()]


def random_rows(n: int, seed: int) -> list[list[int]]:
    """n distinct rows drawn uniformly from every feature's accepted range (valid input, most
    of it unlike any training profile, where two models disagree more often)."""
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    rows: list[list[int]] = []
    while len(rows) < n:
        row = tuple(rng.randint(f.minimum, f.maximum) for f in FEATURES)
        if row not in seen:
            seen.add(row)
            rows.append(list(row))
    return rows


def scrape(url: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a /metrics page: (sample name, labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=5, headers={"accept": "text/plain"}).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def values(url: str, name: str, *by: str) -> dict[tuple[str, ...], float]:
    """The samples of `name`, summed by the values of the labels `by` (none: one total)."""
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in scrape(url).items():
        if sample == name:
            found = dict(labels)
            key = tuple(found.get(label, "") for label in by)
            out[key] = out.get(key, 0.0) + value
    return out


def total(url: str, name: str, **matchers: str) -> float:
    """The sum of `name`'s samples whose labels include `matchers` (0 when none exist)."""
    wanted = set(matchers.items())
    return sum(
        value
        for (sample, labels), value in scrape(url).items()
        if sample == name and wanted <= labels
    )
