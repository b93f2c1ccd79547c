"""The HTTP/1.1 connection both servers speak: uvicorn's httptools protocol plus a header deadline.

Framing is llhttp's (through httptools), not h11's, on purpose: llhttp refuses a request that
carries both Content-Length and Transfer-Encoding (and any Transfer-Encoding whose last coding
is not chunked) with 400 and closes the connection, as RFC 9112 §6.3 asks. h11, uvicorn's
other parser, serves such a request by Transfer-Encoding and keeps the connection open: the
desync a proxy in front could be smuggled through. So nothing here re-checks framing; a test
(`tests/integration/test_http_framing.py`) holds the parser to it.

What uvicorn lacks is a deadline on reading headers: its keep-alive timer runs only between
requests and is not armed at all when a connection opens, so a client that sends nothing, or
one header byte every few seconds, holds a connection (and a slot of the connection cap)
forever. `HeaderDeadlineProtocol` arms one timer when a connection opens and when a request's
first byte arrives, and disarms it once that request's headers are complete; the body and the
response are not under it (the body cap and the app's own deadlines bound those).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

_REQUEST_TIMEOUT = b"".join(
    [
        STATUS_LINE[408],
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: 15\r\n",
        b"connection: close\r\n",
        b"\r\n",
        b"Request Timeout",
    ]
)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; a request's headers must be complete within
    `header_timeout` seconds of the connection opening or of the request's first byte."""

    header_timeout: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._reading_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        # Still armed when this is the connection's first request: the deadline then counts
        # from the connection's opening, so an idle connect cannot buy a second period.
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm_header_deadline()
        super().on_headers_complete()

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(
            self.header_timeout, self._header_deadline_passed
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        # 408 only to a client that began a request and is not being answered (a response
        # in progress on this connection must not be interleaved with another); a connection
        # that never sent a byte is closed silently, like an idle keep-alive one.
        answering = self.cycle is not None and not self.cycle.response_complete
        if self._reading_headers and not answering:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def http_protocol(header_timeout_seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's `http=`, with this header deadline (uvicorn builds
    one instance per connection from the class and passes it no settings of ours)."""
    return type(
        "HeaderDeadlineProtocol",
        (HeaderDeadlineProtocol,),
        {"header_timeout": header_timeout_seconds},
    )
