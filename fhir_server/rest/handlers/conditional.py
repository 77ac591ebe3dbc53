"""Conditional create, update, patch and delete: https://hl7.org/fhir/R4/http.html#ccreate and
#cond-update, #cond-patch, #cdelete.

The criteria are an ordinary search (same parser, same access filter); once they name one
resource, the plain interaction on that id runs through the pipeline again (`ctx.run`), so it
gets the full access decision for that resource. Criteria with unknown parameters, or with none
at all, are refused: ignoring a parameter here would update or delete the wrong records.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl

from fhir_server.fhir.interactions import CREATE
from fhir_server.fhir.outcome import FhirError, Issue, operation_outcome
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import parsed_body, write_result
from fhir_server.rest.handlers.search import parse_search
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result
from fhir_server.storage.documents import Version

MAX_CONDITIONAL_DELETE = 100


async def matches(ctx: RequestContext, ix: Interaction, criteria: list[tuple[str, str]], limit: int) -> list[Version]:
    criteria = [(k, v) for k, v in criteria if k not in ("_format", "_pretty")]
    probe = replace(ix, params=criteria, headers={**ix.headers, "prefer": "handling=strict"}, compartment=None)
    query = parse_search(ctx, probe)
    if not query.clauses:
        raise FhirError(400, "invalid", f"a conditional {ix.method} needs search criteria that select resources")
    if query.include or query.revinclude or query.sort or query.summary or query.elements:
        raise FhirError(400, "invalid", "conditional criteria take search parameters only")
    return await ctx.data.matching(ix.rtype, query, limit)


async def _rerun(ctx: RequestContext, ix: Interaction, rid: str) -> Result:
    assert ctx.run is not None
    return await ctx.run(ctx, replace(ix, id=rid, params=[]))


async def create(ctx: RequestContext, ix: Interaction, header: str) -> Result | None:
    """If-None-Exist: None when nothing matches (the caller creates), else the existing resource."""
    found = await matches(ctx, ix, parse_qsl(header.lstrip("?"), keep_blank_values=True), 2)
    if not found:
        return None
    if len(found) > 1:
        raise FhirError(412, "duplicate", "If-None-Exist matches several resources; nothing was created")
    v = found[0]
    return write_result(ctx, ix, v, 200, f"{v.type}/{v.id} already exists; nothing was created")


async def update(ctx: RequestContext, ix: Interaction) -> Result:
    resource = await parsed_body(ix)
    found = await matches(ctx, ix, ix.params, 2)
    if len(found) > 1:
        raise FhirError(412, "multiple-matches", "the conditional update criteria match several resources")
    body_id = resource.get("id") if isinstance(resource, dict) else None
    if found:
        rid = found[0].id
        if body_id is not None and body_id != rid:
            raise FhirError(400, "invalid", f"the resource id '{body_id}' is not the matching resource's '{rid}'",
                            [f"{ix.type}.id"])
        return await _rerun(ctx, replace(ix, resource=dict(resource, id=rid)), rid)
    if body_id is not None:  # no match, id given: update as create
        return await _rerun(ctx, replace(ix, resource=resource), body_id)
    assert ctx.run is not None
    return await ctx.run(ctx, replace(ix, kind=CREATE, method="POST", params=[], resource=resource))


async def patch(ctx: RequestContext, ix: Interaction) -> Result:
    found = await matches(ctx, ix, ix.params, 2)
    if not found:
        raise FhirError(404, "not-found", "no resource matches the conditional patch criteria")
    if len(found) > 1:
        raise FhirError(412, "multiple-matches", "the conditional patch criteria match several resources")
    return await _rerun(ctx, ix, found[0].id)


async def delete(ctx: RequestContext, ix: Interaction) -> Result:
    """Deletes every match (conditionalDelete = multiple), up to MAX_CONDITIONAL_DELETE, in one unit
    of work: all of them or none where the engine has transactions."""
    found = await matches(ctx, ix, ix.params, MAX_CONDITIONAL_DELETE + 1)
    if len(found) > MAX_CONDITIONAL_DELETE:
        raise FhirError(412, "too-costly", f"the criteria match more than {MAX_CONDITIONAL_DELETE} resources; "
                                           "nothing was deleted. Narrow them.")
    deleted = []
    async with ctx.data.unit(atomic=False) as unit:
        uctx = replace(ctx, unit=unit)
        for v in found:
            await _rerun(uctx, ix, v.id)  # a failure raises: the unit is aborted
            deleted.append(f"{v.type}/{v.id}")
    message = f"deleted {len(deleted)} resource(s)" + (f": {', '.join(deleted)}" if deleted else "")
    return Result(status=200, resource=operation_outcome([Issue("information", "informational", message)]))
