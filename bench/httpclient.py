"""A minimal HTTP/1.1 keep-alive client for the load generator: one connection per simulated client,
one request in flight, requests pre-encoded as bytes, responses parsed only as far as the status
line and Content-Length. It costs a few tens of microseconds of CPU per request on uvloop, and the
orchestrator that runs it is pinned to the other core than the server (see crud.py).

Only 127.0.0.1 is ever targeted (the benchmark's own server).
"""

from __future__ import annotations

import asyncio


class HttpError(Exception):
    pass


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.head_end = -1
        self.need = -1
        self.closed_exc: Exception | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed_exc = exc or ConnectionResetError("server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.closed_exc)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self.head_end = i + 4
            head = bytes(self.buf[:i]).lower()
            j = head.find(b"\r\ncontent-length:")
            if j < 0:
                if b"transfer-encoding: chunked" in head:
                    self._fail(HttpError("chunked responses are not supported by the load client"))
                    return
                length = 0
            else:
                k = head.find(b"\r\n", j + 2)
                length = int(head[j + 17:k if k > 0 else None])
            self.need = self.head_end + length
        if len(self.buf) >= self.need:
            head = bytes(self.buf[:self.head_end])
            body = bytes(self.buf[self.head_end:self.need])
            del self.buf[:self.need]
            self.need = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((int(head[9:12]), head, body))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, raw: bytes) -> tuple[int, bytes, bytes]:
        if self.closed_exc is not None:
            raise self.closed_exc
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


class Client:
    """One keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: _Conn | None = None

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, "127.0.0.1", self.port)
        return conn

    async def send(self, raw: bytes) -> tuple[int, bytes, bytes]:
        if self.conn is None or self.conn.closed_exc is not None:
            self.conn = await self._connect()
        return await self.conn.request(raw)

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
        self.conn = None


def encode(method: str, path: str, body: bytes | None = None, *, port: int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: application/fhir+json"]
    if body is not None:
        lines += ["Content-Type: application/fhir+json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")
