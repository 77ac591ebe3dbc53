"""read and vread (https://hl7.org/fhir/R4/http.html#read, #vread), with conditional read."""

from __future__ import annotations

import base64
from email.utils import parsedate_to_datetime

import orjson

from fhir_server.fhir.outcome import not_found
from fhir_server.rest.context import RequestContext
from fhir_server.rest.formats import accepts_fhir, media_type
from fhir_server.rest.handlers.common import set_version_body
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result, version_headers
from fhir_server.storage.documents import Version


async def read(ctx: RequestContext, ix: Interaction) -> Result:
    v = await ctx.data.read(ix.rtype, ix.rid)
    if _not_modified(ix, v):
        return Result(status=304, headers=version_headers(v), version=v)
    return _version_result(ctx, ix, v)


async def vread(ctx: RequestContext, ix: Interaction) -> Result:
    vid = ix.vid
    assert vid is not None, "a vread names a version"
    if not vid.isdigit():
        raise not_found(ix.rtype, f"{ix.id}/_history/{vid}")
    v = await ctx.data.vread(ix.rtype, ix.rid, int(vid))
    return _version_result(ctx, ix, v)


def _version_result(ctx: RequestContext, ix: Interaction, v: Version) -> Result:
    result = Result(status=200, headers=version_headers(v), version=v)
    if v.type == "Binary" and not ctx.in_bundle and not accepts_fhir(ix.param("_format"), ix.header("accept")):
        return _raw_binary(ctx, v, result)
    set_version_body(ctx, result, v)
    return result


INLINE_SAFE = frozenset({"text/plain", "image/png", "image/jpeg", "image/gif", "image/webp"})


def _raw_binary(ctx: RequestContext, v: Version, result: Result) -> Result:
    """Binary read with a non-FHIR Accept: the content itself (https://hl7.org/fhir/R4/binary.html#rest)."""
    assert v.json is not None, "read and vread never return a delete tombstone"
    meta = orjson.loads(v.json)
    result.media_type = meta.get("contentType") or "application/octet-stream"
    # stored content is never active content of our origin: no sniffing, no script (sandbox), and
    # anything but plain text and images is a download (a stored text/html Binary is not a page of ours)
    result.headers["X-Content-Type-Options"] = "nosniff"
    result.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    if media_type(result.media_type) not in INLINE_SAFE:
        result.headers["Content-Disposition"] = "attachment"
    if v.binary_file is not None:
        result.stream = ctx.data.binary_content(v)
    else:
        data = meta.get("data")
        result.stream = _once(base64.b64decode(data) if data else b"")
    return result


async def _once(data: bytes):
    yield data


def _not_modified(ix: Interaction, v: Version) -> bool:
    """Conditional read: If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2)."""
    inm = ix.header("if-none-match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or f'"{v.version}"' in tags
    ims = ix.header("if-modified-since")
    if ims is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            return False
        return v.last_updated.replace(microsecond=0) <= since
    return False
