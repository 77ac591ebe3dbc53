"""history at instance, type and system level: https://hl7.org/fhir/R4/http.html#history.

Newest first; paged with a keyset cursor on (lastUpdated, version key), so a page never repeats or
skips an entry while others write.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlencode

from fhir_server.fhir.outcome import FhirError
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import instant_param, materialize, set_version_body
from fhir_server.rest.interaction import HISTORY_INSTANCE, HISTORY_SYSTEM, Interaction
from fhir_server.rest.paging import binding, decode_cursor, encode_cursor, page_size
from fhir_server.rest.result import Result
from fhir_server.storage.documents import OP_CREATE, OP_DELETE, Version, fhir_instant, history_id

_METHOD = {OP_CREATE: ("POST", "201"), "update": ("PUT", "200"), OP_DELETE: ("DELETE", "204")}
_KNOWN = {"_count", "_since", "_at", "_format", "_pretty", "_cursor", "_list"}




async def history(ctx: RequestContext, ix: Interaction) -> Result:
    s = ctx.settings
    count = page_size(ix.param("_count"), s.default_page_size, s.max_page_size)
    since = instant_param(ix.param("_since"))
    for name, _ in ix.params:
        if name not in _KNOWN:
            raise FhirError(400, "not-supported", f"history does not support the parameter '{name}'", [name])
    if ix.param("_at") is not None:
        raise FhirError(400, "not-supported", "_at is not supported yet", ["_at"])
    path = {HISTORY_SYSTEM: "_history", HISTORY_INSTANCE: f"{ix.type}/{ix.id}/_history"}.get(ix.kind,
                                                                                           f"{ix.type}/_history")
    bound = binding(ctx.principal, path)
    raw_cursor = ix.param("_cursor")
    cursor = decode_cursor(raw_cursor, ctx.cursor_key, bound) if raw_cursor else None
    before = None
    if cursor is not None:
        try:
            before = (datetime.fromtimestamp(cursor[0] / 1000, timezone.utc), str(cursor[1]), str(cursor[2]))
        except (IndexError, TypeError, ValueError, OverflowError):
            raise FhirError(400, "value", "the paging cursor is invalid or expired")

    rtype = None if ix.kind == HISTORY_SYSTEM else ix.type
    page = await ctx.data.history(rtype, ix.id if ix.kind == HISTORY_INSTANCE else None, since=since,
                                  before=before, count=count)
    versions = page.versions

    base_params = [(k, v) for k, v in (("_count", str(count)), ("_since", ix.param("_since"))) if v is not None]
    links = [{"relation": "self", "url": _url(ctx, path, base_params + _cursor_param(ix))}]
    if page.has_more and versions:
        last = versions[-1]
        token = encode_cursor([int(last.last_updated.timestamp() * 1000), last.type,
                               history_id(last.id, last.version)], ctx.cursor_key, bound)
        links.append({"relation": "next", "url": _url(ctx, path, base_params + [("_cursor", token)])})
    entries = [await _entry(ctx, v) for v in versions]
    bundle: dict = {"resourceType": "Bundle", "type": "history", "link": links, "entry": entries}
    if ix.kind == HISTORY_INSTANCE and cursor is None and since is None:
        bundle["total"] = page.total
    if not entries:
        del bundle["entry"]
    return Result(status=200, resource=bundle)


def _cursor_param(ix: Interaction) -> list[tuple[str, str]]:
    c = ix.param("_cursor")
    return [("_cursor", c)] if c else []


def _url(ctx: RequestContext, path: str, params: list[tuple[str, str]]) -> str:
    return ctx.url(path) + (("?" + urlencode(params)) if params else "")


async def _entry(ctx: RequestContext, v: Version) -> dict:
    method, status = _METHOD[v.op]
    entry: dict = {"fullUrl": ctx.url(v.type, v.id)}
    if not v.deleted:
        result = Result()
        set_version_body(ctx, result, v)
        await materialize(result)
        entry["resource"] = result.fragment()
    entry["request"] = {"method": method, "url": f"{v.type}/{v.id}" if method != "POST" else v.type}
    entry["response"] = {"status": status, "etag": v.etag, "lastModified": fhir_instant(v.last_updated)}
    return entry
