"""$validate at type and instance level: https://hl7.org/fhir/R4/resource-operation-validate.html.

The answer is always an OperationOutcome. When validation ran, the status is 200 whatever the
verdict (the issues say it); errors in the request itself are 4xx.
"""

from __future__ import annotations

import orjson

from fhir_server.fhir import offload
from fhir_server.fhir.outcome import FhirError, Issue, operation_outcome
from fhir_server.fhir.validation import validate_resource
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import parsed_body
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result

MODES = ("create", "update", "delete")


def _from_parameters(body: dict) -> tuple[dict | None, str | None]:
    resource, mode = None, None
    for p in body.get("parameter") or []:
        if not isinstance(p, dict):
            continue
        if p.get("name") == "resource":
            resource = p.get("resource")
        elif p.get("name") == "mode":
            mode = p.get("valueCode") or p.get("valueString")
        elif p.get("name") == "profile":
            raise FhirError(400, "not-supported", "validation against a profile is not supported yet",
                            ["Parameters.parameter"])
    return resource, mode


async def validate(ctx: RequestContext, ix: Interaction) -> Result:
    mode = ix.param("mode")
    resource = None
    if ix.method == "POST" and (ix.body or ix.resource is not None):
        body = await parsed_body(ix)
        if body.get("resourceType") == "Parameters" and ix.type != "Parameters":
            resource, body_mode = _from_parameters(body)
            mode = body_mode or mode
        else:
            resource = body
    if mode is not None and mode not in MODES:
        raise FhirError(400, "value", f"mode must be one of {', '.join(MODES)}")
    if ix.id is not None:
        current = await ctx.data.read(ix.rtype, ix.id)
        if mode == "delete":
            return _ok("the resource can be deleted")
        if resource is None:
            assert current.json is not None, "read never returns a delete tombstone"
            resource = orjson.loads(current.json)
    if resource is None:
        raise FhirError(400, "required", "$validate needs a resource in the body")
    if not isinstance(resource, dict):
        raise FhirError(400, "structure", "the resource to validate must be a JSON object")
    if ix.id is not None and mode == "update" and resource.get("id") != ix.id:
        return Result(status=200, resource=operation_outcome(
            [Issue("error", "invalid", "resource id does not match the instance", [f"{ix.type}.id"])]))
    try:
        await offload.run_if_large(len(ix.body or b""), _validate, resource, ix.type)
    except FhirError as err:
        if err.status >= 500:
            raise
        return Result(status=200, resource=err.outcome())
    return _ok("validation successful: no errors")


def _validate(resource: dict, rtype: str | None) -> str:
    """validate_resource, a module-level function so that a worker process can run it."""
    return validate_resource(resource, expected_type=rtype)


def _ok(message: str) -> Result:
    return Result(status=200, resource=operation_outcome([Issue("information", "informational", message)]))
