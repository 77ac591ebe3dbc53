"""What a handler answers: status, headers and a body that is not serialised yet.

Keeping the body as a dict, pre-serialised stored bytes, or a stream lets a Bundle embed entry
results without re-parsing them (orjson.Fragment) and lets reads return stored JSON as is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from fhir_server.fhir.outcome import FhirError, Issue, operation_outcome
from fhir_server.storage.documents import Version, fhir_instant


@dataclass(slots=True)
class Result:
    status: int = 200
    resource: dict | None = None
    raw: bytes | None = None  # resource JSON exactly as stored
    stream: AsyncIterator[bytes] | None = None
    media_type: str | None = None  # for raw Binary content
    headers: dict[str, str] = field(default_factory=dict)
    version: Version | None = None  # the version this result is about (Bundle entry.response)

    def body_json(self) -> bytes | None:
        if self.raw is not None:
            return self.raw
        if self.resource is not None:
            return orjson.dumps(self.resource)
        return None

    def fragment(self):
        """The body for embedding in a Bundle: a dict or an orjson.Fragment of stored bytes."""
        if self.raw is not None:
            return orjson.Fragment(self.raw)
        return self.resource


def version_headers(v: Version, location: str | None = None) -> dict[str, str]:
    headers = {"ETag": v.etag, "Last-Modified": http_date(v)}
    if location is not None:
        headers["Location"] = location
    return headers


def http_date(v: Version) -> str:
    from email.utils import format_datetime

    return format_datetime(v.last_updated, usegmt=True)


def error_result(err: FhirError) -> Result:
    return Result(status=err.status, resource=err.outcome(), headers=dict(err.headers))


def information(diagnostics: str) -> dict:
    return operation_outcome([Issue("information", "informational", diagnostics)])


def entry_response(result: Result, location: str | None) -> dict:
    """Bundle entry.response for a write or read result (https://hl7.org/fhir/R4/bundle.html)."""
    resp: dict = {"status": str(result.status)}
    if location is not None:
        resp["location"] = location
    if result.version is not None:
        resp["etag"] = result.version.etag
        resp["lastModified"] = fhir_instant(result.version.last_updated)
    return resp
