"""Search through the data handle: https://hl7.org/fhir/R4/search.html.

A parsed query's chains and `_has` are resolved, then compiled to a MongoDB filter, to which the
access filter is added for every type the search touches (the main type, each chain and `_has`
target, every `_include` and `_revinclude` type, all with the search permission): totals, keyset
pages and resolved references only ever see permitted resources, and each returned resource is
checked again. Nothing here knows HTTP: the REST handler builds the Bundle and the links.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fhir_server.access.compartment import ABOUT_PARAMS
from fhir_server.access.filters import patient_compartment_filter, restrict
from fhir_server.fhir.identifiers import INS_SYSTEMS
from fhir_server.fhir.outcome import FhirError
from fhir_server.search import mongo
from fhir_server.search.parse import Clause, Include, ReferenceValue, SearchError, SearchQuery, TokenValue
from fhir_server.search.registry import REFERENCE, field_name, params_for
from fhir_server.storage import keyset
from fhir_server.storage.documents import Version

if TYPE_CHECKING:
    from fhir_server.records.records import Records

MAX_INCLUDED = 1000  # per page; beyond it the caller says so with an OperationOutcome entry
MAX_RESOLVED = 10000  # references a chain or _has may resolve to
ITERATE_ROUNDS = 3


@dataclass(slots=True)
class SearchPage:
    matches: list[Version]
    next_position: list | None
    total: int | None
    docs: dict = field(default_factory=dict)  # (type, id) -> stored document with index fields
    notices: list[str] = field(default_factory=list)  # information for the caller (an OperationOutcome entry)


async def _searchable(records: Records, rtype: str, what: str, within: AbstractSet[str] | None = None) -> dict:
    flt = await records.access.filter("s", rtype, within)
    if flt is None:
        raise FhirError(403, "forbidden", f"the token does not allow searching {rtype}{what}")
    return flt


def pinned_patients(rtype: str, query: SearchQuery, compartment: str | None) -> frozenset[str] | None:
    """The patients a query is confined to by its own criteria (a compartment search, `patient=`,
    `subject=Patient/x`, a Patient `_id`), or None. Lets the access decision answer for these few
    patients instead of every patient the caller may reach; the criteria still apply in full."""
    if compartment is not None:
        return frozenset([compartment])
    about = set(ABOUT_PARAMS.get(rtype, ())) | ({"patient"} if rtype in ("DocumentReference", "List") else set())
    for c in query.clauses:
        if not isinstance(c, Clause) or c.chain is not None or c.missing is not None or c.modifier not in (None, "Patient"):
            continue
        if rtype == "Patient" and c.name == "_id" and all(isinstance(v, TokenValue) and v.system is None and v.code
                                                          for v in c.values):
            return frozenset(v.code for v in c.values)
        if c.name not in about or c.param.type != "reference" or not c.values:
            continue
        ids = set()
        for v in c.values:
            if not isinstance(v, ReferenceValue) or v.url is not None or not v.id:
                break
            if v.type not in ("Patient", None) or (v.type is None and c.name != "patient" and c.modifier is None):
                break
            ids.add(v.id)
        else:
            return frozenset(ids)
    return None


async def matching_filter(records: Records, rtype: str, query: SearchQuery, compartment: str | None) -> dict:
    """The full filter: criteria, compartment and the access filter of every type touched."""

    async def find(target: str, flt: dict, fld: str) -> list:
        access = await _searchable(records, target, " (chained or _has search)")
        return await records.repo.find_values(target, restrict(flt, access), fld, MAX_RESOLVED, unit=records.unit_)

    try:
        resolved = await mongo.resolve(query, find, base_url=records.base_url)
        flt = mongo.compile(query, resolved, base_url=records.base_url)
    except SearchError as exc:
        raise FhirError(400, "invalid", str(exc))
    if compartment is not None:
        cf = patient_compartment_filter(rtype, compartment)
        if cf is None:
            raise FhirError(400, "not-supported", f"{rtype} is not in the Patient compartment")
        flt = restrict(flt, cf)
    return restrict(flt, await _searchable(records, rtype, "", pinned_patients(rtype, query, compartment)))


async def run(records: Records, rtype: str, query: SearchQuery, *, compartment: str | None, sort: list,
              count: int, after: list | None, want_total: bool) -> SearchPage:
    """One page (`count` matches at most, after the keyset position `after`) and the total."""
    flt = await matching_filter(records, rtype, query, compartment)
    total = None
    page_docs: dict = {}
    matches: list[Version] = []
    next_position = None
    if count:
        page = await records.repo.find_page(rtype, flt, sort, count + 1, after, docs=page_docs, unit=records.unit_)
        if want_total and after is None and len(page) <= count:
            total = len(page)  # the first page holds every match: the count is known without counting
        if len(page) > count:
            page = page[:count]
            next_position = page[-1][1]
        matches = [v for v, _ in page if await records.access.may_read("s", v.type, v.json)]
    if want_total and total is None:
        total = await records.repo.count(rtype, flt, unit=records.unit_)
    await records._disclose(matches)
    out = SearchPage(matches, next_position, total, page_docs)
    if not matches and after is None and rtype == "Patient":
        await _existence_notice(records, query, out)
    return out


async def _existence_notice(records: Records, query: SearchQuery, page: SearchPage) -> None:
    """What the DMP tells a professional who holds a patient's INS but is not authorized: that a
    record exists and needs the patient's authorization; never who, nor anything in it. Only for a
    search by one exact INS, and only for callers the access decision allows to be told."""
    if len(query.clauses) != 1 or not records.access.may_learn_existence():
        return
    clause = query.clauses[0]
    if not (isinstance(clause, Clause) and clause.name == "identifier" and clause.modifier is None
            and clause.chain is None and len(clause.values) == 1):
        return
    value = clause.values[0]
    if not (isinstance(value, TokenValue) and value.system in INS_SYSTEMS and value.code):
        return
    found = await records.repo.find_values("Patient", mongo.compile(query), "_id", 1, unit=records.unit_)
    if found:
        page.notices.append("a shared record exists for this INS; reading it needs the patient's authorization "
                            "(or, in an emergency, break-glass)")


async def matching(records: Records, rtype: str, query: SearchQuery, limit: int) -> list[Version]:
    flt = await matching_filter(records, rtype, query, None)
    page = await records.repo.find_page(rtype, flt, [("_id", 1)], limit, unit=records.unit_)
    return await records._disclose([v for v, _ in page if await records.access.may_read("s", v.type, v.json)])


async def includes(records: Records, query: SearchQuery, page: SearchPage) -> tuple[list[Version], bool]:
    """_include and _revinclude (with :iterate): (included versions, truncated past MAX_INCLUDED)."""
    matches = page.matches
    if not (query.include or query.revinclude) or not matches:
        return [], False
    repo = records.repo
    seen = {(v.type, v.id) for v in matches}
    docs = {(v.type, v.id): page.docs.get((v.type, v.id)) for v in matches}  # index fields, from the page
    frontier = list(matches)
    out: list[Version] = []
    truncated = False
    for round_ in range(ITERATE_ROUNDS + 1):
        found: list[Version] = []
        incs = [i for i in query.include if round_ == 0 or i.iterate]
        revs = [i for i in query.revinclude if round_ == 0 or i.iterate]
        if not (incs or revs) or not frontier:
            break
        frontier_docs = await _index_docs(records, frontier, docs)
        for inc in incs:
            for rtype, ids in _forward_targets(inc, frontier_docs).items():
                if rtype not in repo.types:
                    continue
                access = await records.access.filter("s", rtype)
                ids = [i for i in ids if (rtype, i) not in seen]
                if access is None or not ids:
                    continue
                rows = await repo.find_docs(rtype, restrict({"_id": {"$in": ids}}, access), MAX_INCLUDED + 1,
                                            unit=records.unit_)
                found += _take(rows, seen, docs)
        for inc in revs:
            if inc.source_type not in repo.types:
                continue
            access = await records.access.filter("s", inc.source_type)
            if access is None:
                continue
            refs = [f"{v.type}/{v.id}" for v in frontier]
            params = [inc.param] if inc.param != "*" else [
                p.code for p in params_for(inc.source_type).values() if p.type == "reference"]
            conds = [{field_name(REFERENCE, p): {"$in": refs}} for p in params]
            flt = conds[0] if len(conds) == 1 else {"$or": conds}
            rows = await repo.find_docs(inc.source_type, restrict(flt, access), MAX_INCLUDED + 1, unit=records.unit_)
            found += _take(rows, seen, docs)
        found = [v for v in found if await records.access.may_read("s", v.type, v.json)]
        room = MAX_INCLUDED - len(out)
        if len(found) > room:
            found, truncated = found[:room], True
        out += found
        frontier = found
        if truncated:
            break
    return await records._disclose(out), truncated


def _take(rows, seen: set, docs: dict) -> list[Version]:
    found = []
    for v, doc in rows:
        key = (v.type, v.id)
        if key not in seen:
            seen.add(key)
            docs[key] = doc
            found.append(v)
    return found


async def _index_docs(records: Records, versions: list[Version], docs: dict) -> list[tuple[Version, dict]]:
    """Index fields of the given versions (fetched in one query per type when not known yet)."""
    missing: dict[str, list[str]] = {}
    for v in versions:
        if docs.get((v.type, v.id)) is None:
            missing.setdefault(v.type, []).append(v.id)
    for rtype, ids in missing.items():
        for v, doc in await records.repo.find_docs(rtype, {"_id": {"$in": ids}}, len(ids), unit=records.unit_):
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


async def everything(records: Records, patient: str, types: tuple[str, ...], since, count: int,
                     after: tuple[int, str] | None, docs: dict | None = None
                     ) -> tuple[list[Version], tuple[int, str] | None]:
    """One page of `Patient/{id}/$everything`: the resources of the patient's compartment, type by
    type (in `types` order) and by id within a type, each type under its own access filter (as a
    compartment search would be: consent, scopes); `after` = (type index, last id) of the previous
    page. Returns the page and the position after it (None at the end)."""
    from fhir_server.storage.documents import F_ID, F_UPDATED

    out: list[Version] = []
    start_type, last_id = after if after is not None else (0, None)
    for index in range(start_type, len(types)):
        rtype = types[index]
        cf = patient_compartment_filter(rtype, patient)
        if cf is None:
            continue
        access = await records.access.filter("s", rtype, frozenset([patient]))
        if access is None:
            continue  # the caller may not search this type: left out, as a compartment search would 403
        flt = restrict(cf, access)
        if since is not None:
            flt = restrict(flt, {F_UPDATED: {"$gte": since}})
        if index == start_type and last_id is not None:
            flt = restrict(flt, {F_ID: {"$gt": last_id}})
        want = count - len(out)
        page = await records.repo.find_page(rtype, flt, [(F_ID, 1)], want + 1, docs=docs, unit=records.unit_)
        found = [v for v, _ in page[:want] if await records.access.may_read("s", v.type, v.json)]
        out += found
        if len(page) > want:
            return await records._disclose(out), (index, page[want - 1][0].id)
        if len(out) >= count:
            return await records._disclose(out), (index + 1, "") if index + 1 < len(types) else None
    return await records._disclose(out), None
