"""search (https://hl7.org/fhir/R4/search.html) — for now only paging through a type.

Full search parameter support is built in fhir_server.search; until it is wired in, any search
parameter other than the paging/format ones is refused with 400 rather than silently ignored
(ignoring `identifier=…` would hand back every record).
"""

from __future__ import annotations

from urllib.parse import urlencode

from fhir_server.fhir.outcome import FhirError
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import materialize, set_version_body
from fhir_server.rest.interaction import SEARCH_SYSTEM, Interaction
from fhir_server.rest.paging import decode_cursor, encode_cursor, page_size
from fhir_server.rest.result import Result

_ALLOWED = {"_count", "_format", "_pretty", "_cursor", "_total"}


async def search(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.kind == SEARCH_SYSTEM:
        raise FhirError(400, "not-supported", "system-level search is not supported; search a resource type")
    for name, _ in ix.params:
        if name not in _ALLOWED:
            raise FhirError(400, "not-supported", f"search parameter '{name}' is not supported yet", [name])
    s = ctx.services.settings
    count = page_size(ix.param("_count"), s.default_page_size, s.max_page_size)
    after = None
    if ix.param("_cursor"):
        cursor = decode_cursor(ix.param("_cursor"))
        if len(cursor) != 1 or not isinstance(cursor[0], str):
            raise FhirError(400, "value", "the paging cursor is invalid or expired")
        after = cursor[0]
    versions = await ctx.repo.list_current(ix.type, count + 1, after) if count else []
    has_more = len(versions) > count
    versions = versions[:count]
    entries = []
    for v in versions:
        if not ctx.services.access.may_see(ctx.principal, v.type, v.json):
            continue
        result = Result()
        set_version_body(ctx, result, v)
        await materialize(result)
        entries.append({"fullUrl": ctx.url(v.type, v.id), "resource": result.fragment(),
                        "search": {"mode": "match"}})
    params = [("_count", str(count))]
    links = [{"relation": "self", "url": ctx.url(ix.type) + "?" + urlencode(params + _cursor(ix))}]
    if has_more and versions:
        token = encode_cursor([versions[-1].id])
        links.append({"relation": "next", "url": ctx.url(ix.type) + "?" + urlencode(params + [("_cursor", token)])})
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if ix.param("_total") != "none" and not ix.param("_cursor"):
        bundle["total"] = await ctx.repo.count_current(ix.type)
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return Result(status=200, resource=bundle)


def _cursor(ix: Interaction) -> list[tuple[str, str]]:
    c = ix.param("_cursor")
    return [("_cursor", c)] if c else []
