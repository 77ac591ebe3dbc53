"""Pieces shared by the interaction handlers: request bodies, Prefer, write results."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TypeVar

from fhir_server.fhir import offload
from fhir_server.fhir.binary_json import with_data
from fhir_server.fhir.outcome import FhirError, Issue, operation_outcome
from fhir_server.fhir.validation import parse_json_body, validate_resource
from fhir_server.rest.context import RequestContext
from fhir_server.rest.formats import media_type, require_json_body
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result, version_headers
from fhir_server.storage.documents import Version

T = TypeVar("T")
PREFER_VALUES = ("minimal", "representation", "OperationOutcome")


def prefer(ix: Interaction, key: str) -> str | None:
    """One token of the Prefer header (https://hl7.org/fhir/R4/http.html#ops)."""
    header = ix.header("prefer")
    if not header:
        return None
    for part in header.split(","):
        for token in part.split(";"):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
    return None


def resource_body(ix: Interaction) -> dict:
    if ix.resource is not None:
        return ix.resource
    require_json_body(ix.header("content-type"))
    return parse_json_body(ix.body or b"")


async def parsed_body(ix: Interaction) -> dict:
    """`resource_body`, parsed in a worker process when the body is large."""
    return await off_loop(ix, resource_body)


async def off_loop(ix: Interaction, fn: Callable[..., T], *args) -> T:
    """`fn(ix, *args)`: inline for a small body or resource, else in a worker process
    (fhir/offload.py), the body passed apart from the rest of the interaction. `fn` must be a
    module-level function whose arguments and result pickle."""
    if ix.body is not None and len(ix.body) >= offload.INLINE_BYTES:
        return await offload.run_with_bytes(ix.body, _rejoined, fn, dataclasses.replace(ix, body=None), args)
    return await offload.run_if_large(ix.size if ix.resource is not None else 0, fn, ix, *args)


def _rejoined(body: bytes, fn: Callable[..., T], ix: Interaction, args: tuple) -> T:
    ix.body = body
    return fn(ix, *args)


def is_raw_binary(ix: Interaction) -> bool:
    """A Binary sent as its own content type rather than as a FHIR resource."""
    if ix.type != "Binary" or ix.resource is not None:
        return False
    mt = media_type(ix.header("content-type"))
    return bool(mt) and not (mt.endswith("json") or mt.endswith("+json") or "fhir" in mt)


def binary_from_raw(ix: Interaction) -> tuple[dict, bytes]:
    resource: dict = {"resourceType": "Binary", "contentType": media_type(ix.header("content-type"))}
    ctx_ref = ix.header("x-security-context")
    if ctx_ref:
        resource["securityContext"] = {"reference": ctx_ref}
    return resource, ix.body or b""


def split_binary_content(resource: dict, inline_max: int) -> bytes | None:
    """Take a large Binary's bytes out of the resource (they go to GridFS); small ones stay inline."""
    if resource.get("resourceType") != "Binary":
        return None
    data = resource.get("data")
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FhirError(400, "value", "Binary.data is not valid base64", ["Binary.data"])
    if len(raw) <= inline_max:
        return None
    del resource["data"]
    return raw


def inline_binary(resource: dict, content: bytes, inline_max: int) -> bytes | None:
    if len(content) <= inline_max:
        resource["data"] = base64.b64encode(content).decode("ascii")
        return None
    return content


def supplied_provenance(ix: Interaction) -> dict | None:
    """The client's own Provenance of this write, from the `X-Provenance` header
    (https://hl7.org/fhir/R4/http.html#provenance), validated as an R4 Provenance; None without the
    header. Its target may be left out (the client cannot know a new id or version: the server sets
    it) and so may `recorded` (the server's instant); whether it describes this write by this caller
    is checked by Records before anything is written. Anything wrong is 400."""
    raw = ix.header("x-provenance")
    if raw is None:
        return None
    try:
        value = parse_json_body(raw.encode("latin-1"))  # HTTP header bytes, as the client sent them
    except (FhirError, UnicodeEncodeError) as exc:
        detail = exc.issues[0].diagnostics if isinstance(exc, FhirError) and exc.issues else "not JSON"
        raise FhirError(400, "structure", f"X-Provenance: {detail}")
    if not isinstance(value, dict) or value.get("resourceType") != "Provenance":
        raise FhirError(400, "invalid", "X-Provenance must hold one Provenance resource in JSON")
    probe = {"target": [{"reference": f"{ix.type}/{ix.id or 'new'}"}], "recorded": "2000-01-01T00:00:00Z", **value}
    try:
        validate_resource(probe, expected_type="Provenance")
    except FhirError as exc:
        issues = exc.issues or [Issue("error", "invalid", "not a valid Provenance")]
        raise FhirError(400, issues[0].code, f"X-Provenance: {issues[0].diagnostics}", issues[0].expression)
    return value


def if_match_version(ix: Interaction) -> int | None:
    """The version in If-Match (W/"3" or "3"), https://hl7.org/fhir/R4/http.html#concurrency."""
    value = ix.header("if-match")
    if value is None:
        return None
    tag = value.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not tag.isdigit() or len(tag) > 18:
        raise FhirError(400, "value", f"If-Match must be an ETag like W/\"3\", not '{value[:40]}'")
    return int(tag)


def location(ctx: RequestContext, v: Version) -> str:
    return ctx.url(v.type, v.id, "_history", str(v.version))


def write_result(ctx: RequestContext, ix: Interaction, v: Version, status: int, message: str) -> Result:
    headers = version_headers(v, location(ctx, v))
    result = Result(status=status, headers=headers, version=v)
    mode = prefer(ix, "return") or "representation"
    if mode == "OperationOutcome":
        result.resource = operation_outcome([Issue("information", "informational", message)])
    elif mode == "representation":
        set_version_body(ctx, result, v)
    return result


def set_version_body(ctx: RequestContext, result: Result, v: Version) -> None:
    """The stored JSON as is, or, for a Binary whose bytes live in GridFS, a stream that splices them in."""
    if v.binary_file is None:
        result.raw = v.json
    else:
        result.stream = binary_json_stream(ctx, v)


def binary_json_stream(ctx: RequestContext, v: Version):
    """Stream `{...stored JSON..., "data": "<base64>"}` without holding the content in memory."""
    return with_data(v.json or b"{}", ctx.data.binary_content(v))


async def materialize(result: Result) -> None:
    """Collect a streamed body (Bundles embed entries whole)."""
    if result.stream is not None:
        result.raw = b"".join([part async for part in result.stream])
        result.stream = None


def instant_param(raw: str | None, name: str = "_since") -> datetime | None:
    """A FHIR instant query parameter (`_since`), in UTC; 400 unless it is one with a time zone."""
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(400, "value", f"{name} must be a FHIR instant, not '{raw[:40]}'", [name])
    if value.tzinfo is None:
        raise FhirError(400, "value", f"{name} must carry a time zone", [name])
    return value.astimezone(timezone.utc)
