"""search: https://hl7.org/fhir/R4/search.html, by GET, POST _search and in a patient compartment.

parse (fhir_server.search.parse) -> resolve chains and _has -> compile to a MongoDB filter, to
which the access decision's filter is added for every type touched (the main type, chain and
_has targets, _include and _revinclude types) -> one keyset page (storage/keyset.py) -> includes
-> a searchset Bundle whose links carry the canonical query plus an opaque cursor.
"""

from __future__ import annotations

from orjson import Fragment

from fhir_server.access.query import DENIED, Inexact, access_filter, patient_compartment_filter, restrict
from fhir_server.fhir.outcome import FhirError, Issue, operation_outcome
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import materialize, prefer, set_version_body
from fhir_server.rest.interaction import READ, SEARCH_SYSTEM, SEARCH_TYPE, Interaction
from fhir_server.rest.paging import decode_cursor, encode_cursor
from fhir_server.rest.result import Result
from fhir_server.rest.subsetting import subset
from fhir_server.search import mongo
from fhir_server.search.parse import Include, SearchError, SearchQuery, parse
from fhir_server.search.registry import REFERENCE, field_name, params_for
from fhir_server.storage import keyset
from fhir_server.storage.documents import Version

MAX_INCLUDED = 1000  # per page; beyond it the Bundle says so with an OperationOutcome entry
MAX_RESOLVED = 10000  # references a chain or _has may resolve to
ITERATE_ROUNDS = 3
_NOT_SEARCH = {"_cursor", "_format", "_pretty"}


def parse_search(ctx: RequestContext, ix: Interaction) -> SearchQuery:
    """The parsed query of a search-like interaction; 400 for what the spec says to reject."""
    pairs = [(k, v) for k, v in ix.params if k not in _NOT_SEARCH]
    try:
        query = parse(ix.type, pairs)
    except SearchError as exc:
        raise FhirError(400, "invalid", str(exc), [exc.expression] if getattr(exc, "expression", None) else None)
    if query.unknown and prefer(ix, "handling") == "strict":
        names = ", ".join(sorted({name for name, _ in query.unknown}))
        raise FhirError(400, "not-supported", f"unknown search parameter(s) {names} (Prefer: handling=strict)",
                        [name for name, _ in query.unknown])
    return query


async def matching_filter(ctx: RequestContext, ix: Interaction, query: SearchQuery) -> dict:
    """The full MongoDB filter: criteria, compartment and the access decision for every type touched."""
    async def find(rtype: str, flt: dict, field: str) -> list:
        access = access_filter(ctx, SEARCH_TYPE, rtype)
        if access is DENIED:
            raise FhirError(403, "forbidden", f"the token does not allow searching {rtype} (chained or _has search)")
        return await ctx.repo.find_values(rtype, restrict(flt, access), field, MAX_RESOLVED)

    try:
        resolved = await mongo.resolve(query, find, base_url=ctx.base_url)
        flt = mongo.compile(query, resolved, base_url=ctx.base_url)
    except SearchError as exc:
        raise FhirError(400, "invalid", str(exc))
    if ix.compartment is not None:
        cf = patient_compartment_filter(ix.type, ix.compartment)
        if cf is None:
            raise FhirError(400, "not-supported", f"{ix.type} is not in the Patient compartment")
        flt = restrict(flt, cf)
    access = access_filter(ctx, SEARCH_TYPE, ix.type)
    if access is DENIED:
        raise FhirError(403, "forbidden", f"the token does not allow searching {ix.type}")
    if isinstance(access, Inexact):
        query.total = "none"  # a count would include resources that may_see then hides
    return restrict(flt, access)


async def search(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.kind == SEARCH_SYSTEM:
        raise FhirError(400, "not-supported", "system-level search is not supported; search a resource type")
    s = ctx.services.settings
    query = parse_search(ctx, ix)
    flt = await matching_filter(ctx, ix, query)
    sort = mongo.sort_spec(query)
    count = min(query.count if query.count is not None else s.default_page_size, s.max_page_size)

    after, total = None, None
    if ix.param("_cursor"):
        try:
            state = decode_cursor(ix.param("_cursor"))
            after = keyset.decode(state[0])
            total = state[1]
            if len(after) != len(sort) or (total is not None and not isinstance(total, int)):
                raise ValueError
        except (ValueError, IndexError, TypeError):
            raise FhirError(400, "value", "the paging cursor is invalid or expired", ["_cursor"])
    elif query.total != "none" or query.summary == "count":
        total = await ctx.repo.count(ix.type, flt)

    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None and query.total != "none":
        bundle["total"] = total
    entries: list[dict] = []
    next_position = None
    if count and query.summary != "count":
        page_docs: dict = {}
        page = await ctx.repo.find_page(ix.type, flt, sort, count + 1, after, docs=page_docs)
        if len(page) > count:
            page = page[:count]
            next_position = page[-1][1]
        visible = [v for v, _ in page if ctx.services.access.may_see(ctx.principal, v.type, v.json)]
        for v in visible:
            entries.append(await _entry(ctx, v, "match", query))
        entries += await _includes(ctx, query, visible, page_docs)

    base = ctx.url(ix.path_for_links())
    qs = query.to_query_string(include_count=False)
    qs = "&".join(p for p in (qs, f"_count={count}") if p)
    links = [{"relation": "self", "url": f"{base}?{qs}" + (f"&_cursor={ix.param('_cursor')}" if after else "")},
             {"relation": "first", "url": f"{base}?{qs}"}]
    if next_position is not None:
        token = encode_cursor([keyset.encode(next_position), total])
        links.append({"relation": "next", "url": f"{base}?{qs}&_cursor={token}"})
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return Result(status=200, resource=bundle)


async def _entry(ctx: RequestContext, v: Version, mode: str, query: SearchQuery) -> dict:
    result = Result()
    set_version_body(ctx, result, v)
    await materialize(result)
    raw = subset(result.raw, v.type, query.summary, query.elements)
    return {"fullUrl": ctx.url(v.type, v.id), "resource": Fragment(raw), "search": {"mode": mode}}


async def _includes(ctx: RequestContext, query: SearchQuery, matches: list[Version], page_docs: dict) -> list[dict]:
    """_include and _revinclude (with :iterate), each through the access decision for its type."""
    if not (query.include or query.revinclude) or not matches:
        return []
    seen = {(v.type, v.id) for v in matches}
    docs = {(v.type, v.id): page_docs.get((v.type, v.id)) for v in matches}  # index fields, from the page
    frontier = list(matches)
    out: list[dict] = []
    truncated = False
    for round_ in range(ITERATE_ROUNDS + 1):
        found: list[Version] = []
        incs = [i for i in query.include if round_ == 0 or i.iterate]
        revs = [i for i in query.revinclude if round_ == 0 or i.iterate]
        if not (incs or revs) or not frontier:
            break
        frontier_docs = await _index_docs(ctx, frontier, docs)
        for inc in incs:
            targets = _forward_targets(inc, frontier_docs)
            for rtype, ids in targets.items():
                access = access_filter(ctx, READ, rtype)
                if access is DENIED or rtype not in ctx.repo.types:
                    continue
                ids = [i for i in ids if (rtype, i) not in seen]
                if not ids:
                    continue
                rows = await ctx.repo.find_docs(rtype, restrict({"_id": {"$in": ids}}, access), MAX_INCLUDED + 1)
                found += _take(rows, seen, docs)
        for inc in revs:
            if inc.source_type not in ctx.repo.types:
                continue
            access = access_filter(ctx, READ, inc.source_type)
            if access is DENIED:
                continue
            refs = [f"{v.type}/{v.id}" for v in frontier]
            params = [inc.param] if inc.param != "*" else [
                p.code for p in params_for(inc.source_type).values() if p.type == "reference"]
            conds = [{field_name(REFERENCE, p): {"$in": refs}} for p in params]
            flt = conds[0] if len(conds) == 1 else {"$or": conds}
            rows = await ctx.repo.find_docs(inc.source_type, restrict(flt, access), MAX_INCLUDED + 1)
            found += _take(rows, seen, docs)
        found = [v for v in found if ctx.services.access.may_see(ctx.principal, v.type, v.json)]
        for v in found:
            if len(out) >= MAX_INCLUDED:
                truncated = True
                break
            out.append(await _entry(ctx, v, "include", query))
        frontier = found
        if truncated:
            break
    if truncated:
        out.append({"resource": operation_outcome([Issue(
            "warning", "too-costly",
            f"more than {MAX_INCLUDED} resources were included; the rest were left out. Narrow the search "
            "or page with a smaller _count.")]), "search": {"mode": "outcome"}})
    return out


def _take(rows, seen: set, docs: dict) -> list[Version]:
    found = []
    for v, doc in rows:
        key = (v.type, v.id)
        if key not in seen:
            seen.add(key)
            docs[key] = doc
            found.append(v)
    return found


async def _index_docs(ctx: RequestContext, versions: list[Version], docs: dict) -> list[tuple[Version, dict]]:
    """Index fields of the given versions (fetched in one query per type when not known yet)."""
    missing: dict[str, list[str]] = {}
    for v in versions:
        if docs.get((v.type, v.id)) is None:
            missing.setdefault(v.type, []).append(v.id)
    for rtype, ids in missing.items():
        for v, doc in await ctx.repo.find_docs(rtype, {"_id": {"$in": ids}}, len(ids)):
            docs[(rtype, v.id)] = doc
    return [(v, docs.get((v.type, v.id)) or {}) for v in versions]


def _forward_targets(inc: Include, frontier_docs) -> dict[str, list[str]]:
    """Type -> ids referenced by the include's parameter(s) from the frontier resources."""
    out: dict[str, list[str]] = {}
    for v, doc in frontier_docs:
        if inc.source_type not in ("*", v.type):
            continue
        codes = [inc.param] if inc.param != "*" else [
            p.code for p in params_for(v.type).values() if p.type == "reference"]
        for code in codes:
            for ref in keyset.values(doc, field_name(REFERENCE, code)):
                if not isinstance(ref, str) or "/" not in ref or "://" in ref:
                    continue
                rtype, _, rid = ref.partition("/")
                if inc.target_type and rtype != inc.target_type:
                    continue
                out.setdefault(rtype, []).append(rid)
    return out
