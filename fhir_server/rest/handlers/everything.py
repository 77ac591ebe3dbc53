"""`Patient/{id}/$everything` (https://hl7.org/fhir/R4/patient-operation-everything.html): the
patient's compartment and the resources it references (Practitioners, Organizations…), paged.

Through the data handle like any search: each type of the compartment is read under the caller's
access filter (scopes and consent: the patient sees their record but what is hidden from them; a
professional what the patient's Consents allow), the referenced resources as `_include=*` would
bring them. `_type` (comma-separated), `_since` (an instant: resources updated since) and `_count`
(page size) are supported; paging is keyset-based (type, then id) with sealed `next` links bound to
the caller, so pages are stable while the record changes. No `total` (R4 lets a server omit it).
"""

from __future__ import annotations

from urllib.parse import quote

from fhir_server.fhir.outcome import FhirError
from fhir_server.records.search import SearchPage
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import instant_param
from fhir_server.rest.handlers.search import entry
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.paging import binding, decode_cursor, encode_cursor, page_size
from fhir_server.rest.result import Result
from fhir_server.search.parse import Include, SearchQuery


def referenced(ctx: RequestContext) -> SearchQuery:
    """`_include` of what the compartment refers to outside itself (practitioners, organizations):
    what is inside comes as a match anyway, so it is not looked up twice."""
    return SearchQuery("Patient", include=[Include("*", "*", t) for t in ctx.data.referenced_types])


async def everything(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.type != "Patient" or ix.id is None:
        raise FhirError(400, "not-supported", "$everything is an operation on one Patient: Patient/{id}/$everything")
    types = ctx.data.compartment_types
    wanted = ix.param("_type")
    if wanted:
        asked = [t.strip() for t in wanted.split(",") if t.strip()]
        unknown = [t for t in asked if t not in ctx.data.types]
        if unknown:
            raise FhirError(400, "value", f"_type names types this server does not store: {', '.join(unknown)}",
                            ["_type"])
        types = tuple(t for t in types if t in asked)
    since = instant_param(ix.param("_since"))
    count = page_size(ix.param("_count"), ctx.settings.default_page_size, ctx.settings.max_page_size) or 1
    path = f"Patient/{ix.id}/$everything"
    bound = binding(ctx.principal, path + "?" + ",".join(types) + "|" + (ix.param("_since") or ""))
    after = None
    cursor = ix.param("_cursor")
    if cursor:
        state = decode_cursor(cursor, ctx.cursor_key, bound)
        if len(state) != 2 or not isinstance(state[0], int) or not isinstance(state[1], str):
            raise FhirError(400, "value", "the paging cursor is invalid or expired", ["_cursor"])
        after = (state[0], state[1])
    docs: dict = {}
    matches, position = await ctx.data.everything(ix.id, types, since=since, count=count, after=after, docs=docs)
    query = referenced(ctx)
    included, _ = await ctx.data.includes(query, SearchPage(matches, None, None, docs))
    entries = [await entry(ctx, v, "match", query) for v in matches]
    entries += [await entry(ctx, v, "include", query) for v in included]
    params = [f"_count={count}"]
    if wanted:
        params.append("_type=" + quote(",".join(types), safe=","))
    if ix.param("_since"):
        params.append("_since=" + quote(ix.param("_since") or "", safe=""))
    base = ctx.url(path) + "?" + "&".join(params)
    links = [{"relation": "self", "url": base + (f"&_cursor={cursor}" if cursor else "")}]
    if position is not None:
        links.append({"relation": "next", "url": base + "&_cursor=" + encode_cursor(list(position), ctx.cursor_key,
                                                                                     bound)})
    bundle: dict = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if entries:
        bundle["entry"] = entries
    return Result(status=200, resource=bundle)

