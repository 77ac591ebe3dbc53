"""uvicorn's HTTP protocol with a header read timeout (issue 12, item 7).

uvicorn arms a timer only on idle keep-alive connections: a client that opens a connection and
never finishes its request headers holds it (and a slot of `limit_concurrency`) forever — 200
such half-open requests stayed open indefinitely. This protocol closes a connection whose request
headers are not complete `header_timeout` seconds after the connection or the request began.
Request bodies are bounded by the endpoints themselves (rest/app.py, a deadline per body).
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@functools.cache
def header_timeout() -> float:
    """FHIR_HEADER_TIMEOUT_SECONDS, read once per worker process (workers import this afresh)."""
    from fhir_server.config import Settings

    return Settings().header_timeout_seconds


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(header_timeout(), self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
