"""patch with JSON Patch (RFC 6902): https://hl7.org/fhir/R4/http.html#patch.

The patch applies to the current version and the result is validated like an update; the write
is guarded by the version patched (or the client's If-Match), so a concurrent update is never lost.
"""

from __future__ import annotations

import jsonpatch
import orjson

from fhir_server.fhir.outcome import FhirError
from fhir_server.fhir.validation import check_depth, validate_resource
from fhir_server.rest.context import RequestContext
from fhir_server.rest.formats import JSON_PATCH, media_type
from fhir_server.rest.handlers import conditional
from fhir_server.rest.handlers.common import if_match_version, supplied_provenance, write_result
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result
from fhir_server.storage.documents import Version


def _operations(ix: Interaction) -> list:
    if ix.resource is not None:  # a Bundle entry: Binary with contentType application/json-patch+json
        return _from_binary_entry(ix.resource)
    mt = media_type(ix.header("content-type"))
    if mt != JSON_PATCH:
        if mt in ("application/fhir+json", "application/json"):
            raise FhirError(415, "not-supported", "FHIRPath Patch is not supported; send application/json-patch+json")
        raise FhirError(415, "not-supported", f"patch Content-Type must be {JSON_PATCH}")
    try:
        ops = orjson.loads(ix.body or b"")
    except orjson.JSONDecodeError as exc:
        if "recursion" in exc.msg.lower():
            raise FhirError(400, "too-costly", "the JSON Patch document nests too deeply")
        raise FhirError(400, "structure", f"the JSON Patch document is not valid JSON: {exc.msg}")
    if not isinstance(ops, list):
        raise FhirError(400, "structure", "a JSON Patch document is an array of operations")
    check_depth(ops)  # jsonpatch copies values recursively
    return ops


def _from_binary_entry(resource: dict) -> list:
    import base64

    if resource.get("resourceType") != "Binary" or resource.get("contentType") != JSON_PATCH:
        raise FhirError(400, "not-supported", "a PATCH entry must carry a Binary of application/json-patch+json")
    try:
        ops = orjson.loads(base64.b64decode(resource.get("data", ""), validate=True))
    except Exception:
        raise FhirError(400, "structure", "the PATCH entry's Binary.data is not a base64 JSON Patch")
    if not isinstance(ops, list):
        raise FhirError(400, "structure", "a JSON Patch document is an array of operations")
    check_depth(ops)  # jsonpatch copies values recursively
    return ops


async def patch(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.id is None:
        return await conditional.patch(ctx, ix)
    ops = _operations(ix)
    try:
        compiled = jsonpatch.JsonPatch(ops)
    except (jsonpatch.JsonPatchException, TypeError, KeyError) as exc:
        raise FhirError(400, "structure", f"invalid JSON Patch: {exc}")
    if_match = if_match_version(ix)
    provenance = supplied_provenance(ix)
    if ix.type == "Binary":
        raise FhirError(405, "not-supported", "Binary cannot be patched; update it instead")

    def apply(current: Version) -> dict:
        assert current.json is not None, "a patch applies to the current version, never a tombstone"
        try:
            patched = compiled.apply(orjson.loads(current.json))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError, IndexError) as exc:
            raise FhirError(422, "processing", f"the patch cannot be applied: {exc}")
        if not isinstance(patched, dict) or patched.get("resourceType") != ix.type or patched.get("id") != ix.id:
            raise FhirError(422, "processing", "a patch may not change resourceType or id")
        validate_resource(patched, expected_type=ix.type)
        return patched

    v = await ctx.data.patch(ix.rtype, ix.id, apply, if_match=if_match, provenance=provenance)
    return write_result(ctx, ix, v, 200, f"patched {v.type}/{v.id} to version {v.version}")
