"""Head sampling keeps the links: parentbased_traceidratio at 0.1 over 500 concurrent requests.

Which requests are sampled is known exactly: the gateway is the root of each trace, and the
ratio sampler decides from the trace id alone, so the SDK's own sampler applied to each
response's x-trace-id says which traces must exist. Then: every sampled request's trace and
its batch span (parented on a sampled member, linked from all) were exported; no unsampled
request exported anything; every exemplar, on the direct /metrics (in Prometheus) and on
the OTLP path, names a sampled trace.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from contract.features import EXAMPLE_FEATURES
from devtools import procs
from tests.integration.conftest import Spawn
from tests.integration.test_exemplars import (
    LATENCY_HISTOGRAMS,
    SERVER,
    gateway_server_traces,
    query_exemplars,
)
from tests.support.otlp import OtlpReceiver, ReceivedSpan

RATIO = 0.1
REQUESTS = 500
CONCURRENCY = 32  # enough waiting requests that calls merge into batches of several


async def _send(url: str) -> list[str]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one() -> str:
            async with limit:
                response = await client.post("/predict", json={"features": list(EXAMPLE_FEATURES)})
            assert response.status_code == 200, response.text
            return response.headers["x-trace-id"]

        return await asyncio.gather(*(one() for _ in range(REQUESTS)))


def went_alone(spans: list[ReceivedSpan]) -> set[str]:
    """Traces whose request found a call slot free and nothing queued: its own
    model_server.predict CLIENT span is the child of its SERVER span, no batch spans."""
    servers = {
        (s.trace_id, s.span_id)
        for s in spans
        if s.service == "lungwatch-gateway" and s.kind == SERVER
    }
    return {
        s.trace_id
        for s in spans
        if s.name == "model_server.predict" and (s.trace_id, s.parent_span_id) in servers
    }


def linked_traces(spans: list[ReceivedSpan]) -> set[str]:
    return {s.trace_id for s in spans if s.name == "model_server.batched_predict"}


def sampled_by_ratio(trace_id: str) -> bool:
    decision = TraceIdRatioBased(RATIO).should_sample(None, int(trace_id, 16), "POST /predict")
    return bool(decision.decision.is_sampled())


def test_sampled_requests_keep_batch_spans_links_and_exemplars(
    spawn: Spawn, trained_model: procs.TrainedModel, tmp_path: Path
) -> None:
    receiver = OtlpReceiver().start()
    try:
        env = {
            **procs.otlp_env(receiver.endpoint),
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(RATIO),
        }
        # One call in flight: a model call now takes about a millisecond, and this test's
        # client cannot keep 2 slots busy on its own; with one, requests queue and share calls.
        gateway_env = {**env, "LUNGWATCH_GATEWAY_BATCH_MAX_CALLS_IN_FLIGHT": "1"}
        model_server = spawn(
            procs.model_server(trained_model, tmp_path, extra_env=env, ready_timeout=180)
        )
        gateway = spawn(procs.gateway(model_server.url, tmp_path, extra_env=gateway_env))
        prometheus = spawn(
            procs.prometheus(
                tmp_path / "prometheus",
                {
                    "lungwatch-gateway": [gateway.url.removeprefix("http://")],
                    "lungwatch-model-server": [model_server.url.removeprefix("http://")],
                },
            )
        )
        since = time.time() - 1
        sent = asyncio.run(_send(gateway.url))
        assert len(set(sent)) == REQUESTS
        sampled = {t for t in sent if sampled_by_ratio(t)}
        # 500 draws at 0.1: outside 20..90 has a probability far below 1e-6.
        assert 20 <= len(sampled) <= 90, len(sampled)

        def spans() -> list[ReceivedSpan]:
            return receiver.spans()

        def missing() -> dict[str, int]:
            got = spans()
            servers = {
                s.trace_id for s in got if s.service == "lungwatch-gateway" and s.kind == SERVER
            }
            linked = {s.trace_id for s in got if s.name == "model_server.batched_predict"}
            alone = went_alone(got)
            batches = {(s.trace_id, s.span_id) for s in got if s.name == "model_server.batch"}
            needed = {
                (link.trace_id.hex(), link.span_id.hex())
                for s in got
                if s.name == "model_server.batched_predict" and s.trace_id in sampled
                for link in s.span.links
            }
            # The model server exports on its own schedule: its spans may come last.
            predicted = {
                s.trace_id
                for s in got
                if s.service == "lungwatch-model-server" and s.name == "model.predict"
            }
            return {
                "sampled requests without their SERVER span": len(sampled - servers),
                "batch traces without the model server's model.predict span": len(
                    {trace_id for trace_id, _ in needed} - predicted
                ),
                "sampled requests with neither a batched_predict span nor a call of their own": len(
                    sampled - linked - alone
                ),
                "batch spans linked from sampled requests, never exported": len(needed - batches),
            }

        try:
            procs.wait_until(lambda: not any(missing().values()), 30, "every sampled span")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {missing()}") from None
        got = spans()
        by_id = {(s.trace_id, s.span_id): s for s in got}

        # Nothing of an unsampled request was exported.
        assert gateway_server_traces(receiver) == sampled

        mixed_batches = 0
        linked_not_parent = 0
        alone = went_alone(got)
        assert linked_traces(got) & sampled  # calls were shared
        for trace_id in sampled - alone:
            [waiting] = [
                s
                for s in got
                if s.trace_id == trace_id and s.name == "model_server.batched_predict"
            ]
            [link] = list(waiting.span.links)
            batch = by_id[(link.trace_id.hex(), link.span_id.hex())]
            assert batch.name == "model_server.batch"
            # The batch span links back to this request ...
            members = {(m.trace_id.hex(), m.span_id.hex()) for m in batch.span.links}
            assert (trace_id, waiting.parent_span_id) in members
            # ... and lives in a sampled member's trace, where the model server's spans are.
            assert batch.trace_id in sampled
            assert any(
                s.service == "lungwatch-model-server" and s.name == "model.predict"
                for s in got
                if s.trace_id == batch.trace_id
            )
            if batch.trace_id != trace_id:
                linked_not_parent += 1
            if any(t not in sampled for t, _ in members):
                mixed_batches += 1
        # The case the parent choice is for: batches that also held unsampled requests.
        assert mixed_batches > 0

        # Exemplars only from sampled spans, on both paths.
        def stored() -> dict[str, list[str]] | None:
            found = {
                m: [e["labels"]["trace_id"] for e in query_exemplars(prometheus.url, m, since)]
                for m in LATENCY_HISTOGRAMS
            }
            return found if all(found.values()) else None

        in_prometheus = procs.wait_until(stored, 30, "exemplars of every latency histogram")
        assert in_prometheus is not None
        for metric, trace_ids in in_prometheus.items():
            assert set(trace_ids) <= sampled, (metric, set(trace_ids) - sampled)
        otlp = [
            trace_id
            for m in receiver.metrics()
            if m.name in LATENCY_HISTOGRAMS
            for trace_id, _span_id, _value in m.exemplars()
        ]
        assert otlp and set(otlp) <= sampled, set(otlp) - sampled
        sizes = Counter(
            int(s.attributes()["lungwatch.batch.requests"])
            for s in got
            if s.name == "model_server.batch"
        )
        print(
            f"\n  {REQUESTS} requests, {len(sampled)} sampled; batch spans by requests in them "
            f"{dict(sorted(sizes.items()))}; sampled requests whose batch span is in another "
            f"sampled trace (linked, not parent): {linked_not_parent}; batches mixing sampled "
            f"and unsampled requests (counted per sampled member): {mixed_batches}; exemplars "
            + ", ".join(f"{m}={len(t)}" for m, t in in_prometheus.items())
            + f", OTLP={len(otlp)}"
        )
    finally:
        receiver.stop()
