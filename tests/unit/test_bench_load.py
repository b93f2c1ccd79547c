"""The benchmark client's HTTP/1.1 response parsing, its rate-kept rule, and what it records of
each answer (no network)."""

from __future__ import annotations

import asyncio

import pytest

from bench.load import (
    HttpError,
    Recorder,
    Response,
    Target,
    answer_version,
    build_request,
    kept_rate,
    read_response,
)


def parse(*chunks: bytes, eof: bool = True) -> Response:
    async def go() -> Response:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        if eof:
            reader.feed_eof()
        return await read_response(reader)

    return asyncio.run(go())


def test_content_length_body_and_keep_alive() -> None:
    raw = b'HTTP/1.1 200 OK\r\ncontent-length: 13\r\ncontent-type: application/json\r\n\r\n{"a": [1, 2]}'
    response = parse(raw + b"HTTP/1.1 200 OK\r\n")  # the next response must stay unread
    assert response == Response(200, b'{"a": [1, 2]}', keep_alive=True)


def test_chunked_body_is_reassembled() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    )
    assert parse(raw, b"leftover", eof=False).body == b"hello world"


def test_connection_close_is_reported() -> None:
    raw = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"
    assert parse(raw) == Response(503, b"no", keep_alive=False)


def test_body_without_length_reads_to_eof_and_closes() -> None:
    assert parse(b"HTTP/1.1 200 OK\r\n\r\nuntil eof") == Response(200, b"until eof", False)


def test_no_content_has_no_body() -> None:
    assert parse(b"HTTP/1.1 204 No Content\r\n\r\n", eof=False).body == b""


def test_truncated_or_garbage_responses_raise() -> None:
    with pytest.raises(HttpError):
        parse(b"HTTP/1.1 200 OK\r\nContent-Len")
    with pytest.raises(HttpError):
        parse(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(asyncio.IncompleteReadError):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")


def test_built_request_is_a_complete_post() -> None:
    body = b'{"features": [1, 2]}'
    raw = build_request("127.0.0.1", 8000, "/predict", body)
    head, _, sent = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /predict HTTP/1.1"
    assert b"Content-Length: %d" % len(body) in head
    assert sent == body


def test_target_cycles_prebuilt_requests_from_a_url() -> None:
    target = Target.from_url("http://127.0.0.1:9999/invocations", [b"{}", b"[]"])
    assert (target.host, target.port) == ("127.0.0.1", 9999)
    assert [r.split(b" ")[1] for r in target.requests] == [b"/invocations"] * 2


def run(offered: float, achieved: float, requests: int = 600, errors: int = 0) -> dict[str, float]:
    return {
        "rate": 50.0,
        "offered_rps": offered,
        "achieved_rps": achieved,
        "requests": requests,
        "errors": errors,
    }


def test_rate_is_kept_against_what_the_schedule_offered() -> None:
    # a Poisson schedule offered 44.6/s instead of the nominal 50: answering all of it is kept
    assert kept_rate(run(offered=44.6, achieved=44.5)) is True
    assert kept_rate(run(offered=50.0, achieved=47.4)) is False  # below 95 %
    assert kept_rate(run(offered=50.0, achieved=48.0)) is True


def test_rate_is_not_kept_with_errors_or_without_requests() -> None:
    assert kept_rate(run(50, 50, requests=600, errors=7)) is False  # > 1 %
    assert kept_rate(run(50, 50, requests=600, errors=6)) is True
    assert kept_rate(run(50, 50, requests=0)) is False


def test_the_version_an_answer_names_is_found_without_parsing() -> None:
    body = b'{"prediction":1,"label":"Medium","model_version":"12","trace_id":"ab"}'
    assert answer_version(body) == "12"
    assert answer_version(b'{"predictions": [1]}') is None  # another system's answer
    assert answer_version(b'{"model_version":"') is None  # truncated


def test_answers_are_counted_by_version_and_recorded_on_the_monotonic_clock() -> None:
    rec = Recorder(requests=[], clock_offset=1000.0)
    rec.record(200, 0.004, 5.0, b'{"model_version":"1"}', sent=4.996)
    rec.record(200, 0.006, 6.0, b'{"model_version":"2"}', sent=5.994)
    rec.record(503, 0.001, 6.5, b'{"model_version":"2"}', sent=6.499)  # failures name none
    rec.record("drain_timeout", 20.0, 27.0, sent=7.0)
    result = rec.result(10.0)
    assert result["versions"] == {"1": 1, "2": 1}
    assert result["records"] == [
        (pytest.approx(1004.996), 0.004, 1, "1"),
        (pytest.approx(1005.994), 0.006, 1, "2"),
        (pytest.approx(1006.499), 0.001, 0, ""),
        (pytest.approx(1007.0), 20.0, 0, ""),
    ]
    assert (result["ok"], result["errors"]) == (2, 2)
    assert "records" not in Recorder().result(1.0)  # only when asked: a run's list is large
