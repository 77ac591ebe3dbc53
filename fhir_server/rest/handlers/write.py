"""create, update (and update-as-create), delete: https://hl7.org/fhir/R4/http.html#create etc.

Everything is validated before anything is written, so a rejected request changes nothing.
"""

from __future__ import annotations

from fhir_server.fhir.outcome import FhirError
from fhir_server.fhir.validation import validate_resource
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers import conditional
from fhir_server.rest.handlers.common import (
    binary_from_raw,
    if_match_version,
    inline_binary,
    is_raw_binary,
    off_loop,
    prefer,
    resource_body,
    split_binary_content,
    supplied_provenance,
    write_result,
)
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result, information


async def incoming(ctx: RequestContext, ix: Interaction) -> tuple[dict, bytes | None]:
    """The validated resource and, for a large Binary, its content to store apart. Parsing and
    validating a large body runs in a worker process (fhir/offload.py), not on the event loop."""
    size = len(ix.body) if ix.body is not None else ix.size
    limit = ctx.settings.max_resource_bytes
    if ix.type != "Binary" and size > limit:  # a Binary's content goes to GridFS: any size fits
        raise FhirError(413, "too-costly", f"the resource exceeds the {limit} byte limit of one stored resource")
    inline_max = ctx.services.settings.binary_inline_max_bytes
    if is_raw_binary(ix):  # nothing to parse: the bytes are the content
        resource, raw = binary_from_raw(ix)
        content = inline_binary(resource, raw, inline_max)
        validate_resource(resource, expected_type="Binary")
        return resource, content
    return await off_loop(ix, _incoming, inline_max)


def _incoming(ix: Interaction, inline_max: int) -> tuple[dict, bytes | None]:
    """A FHIR JSON body (or a Bundle entry's resource), parsed and validated."""
    resource = resource_body(ix)
    validate_resource(resource, expected_type=ix.type)
    return resource, split_binary_content(resource, inline_max)


async def create(ctx: RequestContext, ix: Interaction) -> Result:
    resource, content = await incoming(ctx, ix)  # validate first: a rejected request does nothing
    provenance = supplied_provenance(ix)
    if_none_exist = ix.header("if-none-exist")
    if if_none_exist:
        existing = await conditional.create(ctx, ix, if_none_exist)
        if existing is not None:
            return existing
    resource.pop("id", None)  # the server assigns ids on create (R4 http.html#create)
    # ix.id is only ever set by a transaction that pre-assigned it for urn:uuid rewriting
    v = await ctx.data.create(ix.rtype, resource, content=content, rid=ix.id, provenance=provenance)
    return write_result(ctx, ix, v, 201, f"created {v.type}/{v.id} version {v.version}")


async def update(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.id is None:
        return await conditional.update(ctx, ix)
    resource, content = await incoming(ctx, ix)
    provenance = supplied_provenance(ix)
    body_id = resource.get("id")
    if body_id is None and not is_raw_binary(ix):
        raise FhirError(400, "required", "the resource must carry an id equal to the URL's", [f"{ix.type}.id"])
    if body_id is not None and body_id != ix.id:
        raise FhirError(400, "invalid", f"resource id '{body_id}' does not match the URL id '{ix.id}'",
                        [f"{ix.type}.id"])
    v, created = await ctx.data.update(ix.rtype, ix.id, resource, if_match=if_match_version(ix), content=content,
                                       provenance=provenance)
    status = 201 if created else 200
    return write_result(ctx, ix, v, status, f"{'created' if created else 'updated'} {v.type}/{v.id} version {v.version}")


async def delete(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.id is None:
        return await conditional.delete(ctx, ix)
    v = await ctx.data.delete(ix.rtype, ix.id, if_match=if_match_version(ix), provenance=supplied_provenance(ix))
    headers = {"ETag": v.etag} if v is not None else {}
    message = f"deleted {ix.type}/{ix.id}" if v is not None else f"{ix.type}/{ix.id} did not exist; nothing deleted"
    if prefer(ix, "return") == "OperationOutcome":
        return Result(status=200, resource=information(message), headers=headers, version=v)
    return Result(status=204, headers=headers, version=v)
