"""search: https://hl7.org/fhir/R4/search.html, by GET, POST _search and in a patient compartment.

parse (fhir_server.search.parse) -> the data handle runs it (records/search.py: chains, _has,
compartment and access filters, one keyset page, includes) -> a searchset Bundle whose links carry
the canonical query plus a sealed cursor.
"""

from __future__ import annotations

from orjson import Fragment

from fhir_server.fhir.outcome import FhirError, Issue, operation_outcome
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import materialize, prefer, set_version_body
from fhir_server.rest.interaction import SEARCH_SYSTEM, Interaction
from fhir_server.rest.paging import binding, decode_cursor, encode_cursor
from fhir_server.rest.result import Result
from fhir_server.rest.subsetting import subset
from fhir_server.search import mongo
from fhir_server.search.limits import SearchLimits, too_costly
from fhir_server.search.parse import SearchError, SearchQuery, parse
from fhir_server.storage import keyset
from fhir_server.storage.documents import Version

MAX_INCLUDED = 1000  # per page (records/search.py enforces it; the Bundle says so)
_NOT_SEARCH = {"_cursor", "_format", "_pretty"}


def parse_search(ctx: RequestContext, ix: Interaction) -> SearchQuery:
    """The parsed query of a search-like interaction; 400 for what the spec says to reject."""
    pairs = [(k, v) for k, v in ix.params if k not in _NOT_SEARCH]
    s = ctx.settings
    costly = too_costly(pairs, SearchLimits(s.search_max_params, s.search_max_values, s.search_max_chain_depth,
                                            s.search_max_has_depth, s.search_max_includes))
    if costly is not None:
        raise FhirError(400, "too-costly", f"this search asks too much: {costly}")
    try:
        query = parse(ix.rtype, pairs)
    except SearchError as exc:
        expression = getattr(exc, "expression", None)
        raise FhirError(400, "invalid", str(exc), [expression] if expression else None)
    if query.unknown and prefer(ix, "handling") == "strict":
        names = ", ".join(sorted({name for name, _ in query.unknown}))
        raise FhirError(400, "not-supported", f"unknown search parameter(s) {names} (Prefer: handling=strict)",
                        [name for name, _ in query.unknown])
    return query


async def search(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.kind == SEARCH_SYSTEM:
        raise FhirError(400, "not-supported", "system-level search is not supported; search a resource type")
    s = ctx.settings
    query = parse_search(ctx, ix)
    sort = mongo.sort_spec(query)
    count = min(query.count if query.count is not None else s.default_page_size, s.max_page_size)
    bound = binding(ctx.principal, ix.path_for_links())

    after, total = None, None
    cursor = ix.param("_cursor")
    if cursor:
        state = decode_cursor(cursor, ctx.cursor_key, bound)
        try:
            after = keyset.decode(state[0])
            total = state[1]
            if len(after) != len(sort) or (total is not None and not isinstance(total, int)):
                raise ValueError
        except (ValueError, IndexError, TypeError):
            raise FhirError(400, "value", "the paging cursor is invalid or expired", ["_cursor"])
    want_total = after is None and (query.total != "none" or query.summary == "count")
    page = await ctx.data.search(ix.rtype, query, compartment=ix.compartment, sort=sort,
                                 count=count if query.summary != "count" else 0, after=after, want_total=want_total)
    if want_total:
        total = page.total

    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None and query.total != "none":
        bundle["total"] = total
    entries = [await entry(ctx, v, "match", query) for v in page.matches]
    included, truncated = await ctx.data.includes(query, page)
    entries += [await entry(ctx, v, "include", query) for v in included]
    for notice in page.notices:
        entries.append({"resource": operation_outcome([Issue("information", "informational", notice)]),
                        "search": {"mode": "outcome"}})
    if truncated:
        entries.append({"resource": operation_outcome([Issue(
            "warning", "too-costly",
            f"more than {MAX_INCLUDED} resources were included; the rest were left out. Narrow the search "
            "or page with a smaller _count.")]), "search": {"mode": "outcome"}})

    base = ctx.url(ix.path_for_links())
    qs = query.to_query_string(include_count=False)
    qs = "&".join(p for p in (qs, f"_count={count}") if p)
    links = [{"relation": "self", "url": f"{base}?{qs}" + (f"&_cursor={ix.param('_cursor')}" if after else "")},
             {"relation": "first", "url": f"{base}?{qs}"}]
    if page.next_position is not None:
        token = encode_cursor([keyset.encode(page.next_position), total], ctx.cursor_key, bound)
        links.append({"relation": "next", "url": f"{base}?{qs}&_cursor={token}"})
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return Result(status=200, resource=bundle)


async def entry(ctx: RequestContext, v: Version, mode: str, query: SearchQuery) -> dict:
    """A searchset entry for a version (subset per `_summary`/`_elements`)."""
    result = Result()
    set_version_body(ctx, result, v)
    await materialize(result)
    assert result.raw is not None, "a search match is a current version, never a tombstone"
    raw = subset(result.raw, v.type, query.summary, query.elements)
    return {"fullUrl": ctx.url(v.type, v.id), "resource": Fragment(raw), "search": {"mode": mode}}
