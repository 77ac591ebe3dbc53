"""How many large requests one client may have in flight (issue 12): the rest get 429.

A large body (over `offload.INLINE_BYTES`, or of unknown length) costs the server far more than a
read: the body is received and copied, parsed and validated in a worker process, and a batch is
then dispatched entry by entry on the event loop. One client sending such bodies on many
connections at once took most of two cores and multiplied everyone's read latency (bench/hostile.py).
Large bodies already queue for the worker processes, so more than one or two per client at once
buys that client no throughput, only everyone else's latency. A client over its share is told
so before its body is read: 429 with Retry-After (RFC 6585 §4), the OperationOutcome code
`throttled`. The key is the client and the user it acts for, so the users of one SMART app do not
share one allowance. Counted per server worker process (each has its own worker processes); the
limit of a deployment with N workers is N times the setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fhir_server.access.decision import principal_key
from fhir_server.auth.principal import Principal
from fhir_server.fhir import offload
from fhir_server.fhir.outcome import FhirError

DISCARD_BYTES = 1 << 20  # a refused body up to this size is received and dropped, keeping the connection


def _size(content_length: str | None) -> float:
    return int(content_length) if content_length is not None and content_length.isdigit() else float("inf")


def is_large(content_length: str | None) -> bool:
    """A body over the size that is parsed inline, or one whose size is not declared (chunked)."""
    return _size(content_length) >= offload.INLINE_BYTES


class LargeRequests:
    """Large requests in flight, per client key, in this process."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._in_flight: dict[str, int] = {}

    @contextmanager
    def admit(self, principal: Principal, content_length: str | None) -> Iterator[None]:
        if not is_large(content_length):
            yield
            return
        key = principal_key(principal)  # the same user through the same client, or the backend client
        held = self._in_flight.get(key, 0)
        if held >= self.per_client:
            headers = {"Retry-After": "1"}
            if _size(content_length) > DISCARD_BYTES:
                headers["Connection"] = "close"  # not worth receiving only to throw away
            raise FhirError(429, "throttled", f"at most {self.per_client} large requests of one client are "
                                              "processed at a time; retry when one has been answered",
                            headers=headers)
        self._in_flight[key] = held + 1
        try:
            yield
        finally:
            left = self._in_flight[key] - 1
            if left:
                self._in_flight[key] = left
            else:
                del self._in_flight[key]
