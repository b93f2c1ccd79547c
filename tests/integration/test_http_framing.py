"""HTTP/1.1 at the socket, against the real servers: ambiguous framing refused and the connection
closed, slow headers timed out, the connection cap, one trace per pipelined request, and
forwarded headers ignored from a peer that is not a configured proxy (issue 16, findings 5, 7)."""

from __future__ import annotations

import json
import secrets
import select
import socket
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import httpx
import pytest

from devtools import procs
from tests.integration.conftest import Stack
from tests.support.otlp import OtlpReceiver

HEADER_TIMEOUT_SECONDS = 1.0
MAX_CONNECTIONS = 4
SPOOFED_CLIENT = "203.0.113.9"  # TEST-NET-3: no real peer has it
TRUSTED_PROXY = "127.0.0.2"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OtlpReceiver
) -> Iterator[procs.ManagedProcess]:
    """A gateway of its own (short header deadline, small cap, one trusted proxy) in front of
    no model server: /health, the 422s and the server spans need none."""
    process = procs.gateway(
        f"http://127.0.0.1:{procs.free_port()}",
        tmp_path_factory.mktemp("http-framing"),
        extra_env=procs.otlp_env(otlp_receiver.endpoint),
        LUNGWATCH_GATEWAY_HTTP_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_SECONDS),
        LUNGWATCH_GATEWAY_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        LUNGWATCH_GATEWAY_FORWARDED_ALLOW_IPS=TRUSTED_PROXY,
    ).start()
    yield process
    process.stop()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One response off a connection (status, lower-cased headers, body by Content-Length)."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), f"not a response: {status_line!r}"
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset (a byte of ours crossed its
    close) ends it too, after what was already received."""
    received = b""
    sock.settimeout(5)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionError:
            return received
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open after {received!r}"
            ) from None
        if not chunk:
            return received
        received += chunk


# --- framing ---------------------------------------------------------------------------------
AMBIGUOUS = {
    "content-length then chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "chunked then content-length": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    "content-length and a non-chunked coding": b"Content-Length: 2\r\nTransfer-Encoding: gzip\r\n",
}


def refused_and_closed(url: str, path: bytes, framing: bytes) -> None:
    with connect(url) as sock:
        sock.sendall(
            b"POST " + path + b" HTTP/1.1\r\nHost: lungwatch\r\n"
            b"Content-Type: application/json\r\n" + framing + b"\r\n0\r\n\r\n"
        )
        stream = sock.makefile("rb")
        status, headers, _ = read_response(stream)
        assert status == 400
        assert headers.get("connection") == "close"
        # RFC 9112 §6.3: the server closes the connection after such a request.
        assert stream.read() == b"", "the connection stayed open after ambiguous framing"


@pytest.mark.parametrize("framing", list(AMBIGUOUS.values()), ids=list(AMBIGUOUS))
def test_gateway_refuses_content_length_with_transfer_encoding_and_closes(
    gateway: procs.ManagedProcess, framing: bytes
) -> None:
    refused_and_closed(gateway.url, b"/predict", framing)


def test_model_server_refuses_content_length_with_transfer_encoding_and_closes(
    stack: Stack,
) -> None:
    refused_and_closed(
        stack.model_server_url, b"/invocations", AMBIGUOUS["content-length then chunked"]
    )


# --- header deadline and connection cap ------------------------------------------------------
def test_slow_and_silent_connections_are_closed_at_the_header_deadline(
    gateway: procs.ManagedProcess,
) -> None:
    silent = connect(gateway.url)
    slow = connect(gateway.url)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: lungwatch\r\nX-Slow: ")
    deadline = time.monotonic() + 10 * HEADER_TIMEOUT_SECONDS + 5
    try:
        # One header byte every 0.2 s: the client is never idle for long, but its headers
        # never complete, which is what the deadline is about. The server says nothing to
        # such a client until it gives up on it.
        while time.monotonic() < deadline:
            if select.select([slow], [], [], 0.2)[0]:
                break
            try:
                slow.sendall(b"a")
            except ConnectionError:
                break
        else:
            pytest.fail("a connection dribbling its headers was never closed")
        received = read_until_closed(slow)
        assert received.startswith(b"HTTP/1.1 408 "), received
        # Opened with the slow one and silent since: closed without a word.
        assert read_until_closed(silent) == b""
    finally:
        silent.close()
        slow.close()


def test_a_request_beyond_the_connection_cap_gets_503_and_a_closed_connection(
    gateway: procs.ManagedProcess,
) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = connect(gateway.url)
            # Headers complete, body still owed: served, held open, and past the deadline.
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: lungwatch\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            held.append(sock)
        with connect(gateway.url) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: lungwatch\r\n\r\n")
            stream = extra.makefile("rb")
            status, headers, _ = read_response(stream)
            assert status == 503
            assert headers.get("connection") == "close"
            assert stream.read() == b""
    finally:
        for sock in held:
            sock.close()
    # The held connections' slots come back once they are gone.
    procs.wait_until(
        lambda: httpx.get(f"{gateway.url}/health", timeout=2).status_code == 200,
        10,
        "the gateway serving again after the held connections closed",
    )


# --- traces and forwarded headers ------------------------------------------------------------
def test_pipelined_requests_on_one_connection_get_a_trace_each(
    gateway: procs.ManagedProcess,
) -> None:
    request = (
        b"POST /predict HTTP/1.1\r\nHost: lungwatch\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    with connect(gateway.url) as sock:
        # All three in one write: uvicorn parses the later ones while the first is served.
        sock.sendall(request * 3)
        stream = sock.makefile("rb")
        responses = [read_response(stream) for _ in range(3)]
    assert [status for status, _, _ in responses] == [422, 422, 422]
    trace_ids = [headers.get("x-trace-id") for _, headers, _ in responses]
    assert all(trace_ids), trace_ids
    assert len(set(trace_ids)) == 3, f"pipelined requests share a trace: {trace_ids}"


def server_span_attributes(receiver: OtlpReceiver, trace_id: str) -> dict[str, Any]:
    def server_span() -> dict[str, Any]:
        for span in receiver.trace(trace_id):
            if span.kind == 2:  # SPAN_KIND_SERVER
                return span.attributes()
        return {}

    return procs.wait_until(server_span, 15, f"the server span of trace {trace_id}")


def forwarded_request_span(
    url: str, path: str, receiver: OtlpReceiver, peer: str = "127.0.0.1"
) -> dict[str, Any]:
    """The server span's attributes of a request from `peer` claiming another client."""
    trace_id = secrets.token_hex(16)
    with httpx.Client(transport=httpx.HTTPTransport(local_address=peer), timeout=10) as client:
        client.post(
            f"{url}{path}",
            content=json.dumps({}),
            headers={
                "content-type": "application/json",
                "traceparent": f"00-{trace_id}-{'1' * 16}-01",
                "x-forwarded-for": SPOOFED_CLIENT,
                "x-forwarded-proto": "https",
            },
        )
    return server_span_attributes(receiver, trace_id)


def assert_not_believed(attributes: dict[str, Any], peer: str = "127.0.0.1") -> None:
    assert attributes.get("client.address") == peer, attributes
    assert attributes.get("url.scheme") == "http", attributes
    assert SPOOFED_CLIENT not in {str(value) for value in attributes.values()}, attributes


def test_gateway_believes_forwarded_headers_only_from_a_configured_proxy(
    gateway: procs.ManagedProcess, otlp_receiver: OtlpReceiver
) -> None:
    # Any 127/8 address is this host: 127.0.0.2 plays the proxy the gateway was told of.
    proxied = forwarded_request_span(gateway.url, "/predict", otlp_receiver, TRUSTED_PROXY)
    assert proxied.get("client.address") == SPOOFED_CLIENT, proxied
    assert proxied.get("url.scheme") == "https", proxied
    assert_not_believed(forwarded_request_span(gateway.url, "/predict", otlp_receiver))


def test_model_server_ignores_forwarded_headers_with_no_proxy_configured(stack: Stack) -> None:
    assert_not_believed(forwarded_request_span(stack.model_server_url, "/invocations", stack.otlp))
