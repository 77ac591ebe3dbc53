"""`POST Patient/{id}/$destroy`: destroy a closed record (a server-defined operation; the DMP's right
to ask for the record's destruction; records/destruction.py says what goes and what stays).

    POST [base]/Patient/{id}/$destroy[?reason=…]      (or a Parameters body with `reason`)

Only POST: it removes data. The answer is a Parameters resource: `receipt` (the JWS compact
serialization signed by the server, verifiable with /auth/jwks), `auditEvent` (the AuditEvent that
carries it in the audit trail, the receipt's stable address) and the counts. Who may ask, and
whether the grace period applies, is decided by the data handle, not here.
"""

from __future__ import annotations

from fhir_server.fhir.outcome import FhirError
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import parsed_body
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result


def _reason(body: dict) -> str | None:
    if body.get("resourceType") != "Parameters":
        raise FhirError(400, "structure", "the body of $destroy is a Parameters resource", ["Parameters"])
    for p in body.get("parameter") or []:
        if isinstance(p, dict) and p.get("name") == "reason":
            value = p.get("valueString")
            if not isinstance(value, str):
                raise FhirError(400, "value", "reason is a valueString", ["Parameters.parameter"])
            return value
    return None


async def destroy(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.type != "Patient" or ix.id is None:
        raise FhirError(400, "not-supported", "$destroy is an operation on one Patient: Patient/{id}/$destroy")
    if ix.method != "POST":
        raise FhirError(405, "not-supported", "$destroy removes data: use POST", headers={"Allow": "POST"})
    reason = ix.param("reason")
    if ix.body or ix.resource is not None:
        reason = _reason(await parsed_body(ix)) or reason
    if reason is not None and len(reason) > 1000:
        raise FhirError(400, "value", "reason is at most 1000 characters", ["reason"])
    job = await ctx.data.destroy(ix.id, reason)
    params: list[dict] = [
        {"name": "receipt", "valueString": job["receipt"]},
        {"name": "auditEvent", "valueReference": {"reference": f"AuditEvent/{job['receipt_id']}"}},
    ]
    for rtype, n in sorted(job["counts"].items()):
        if isinstance(n, dict):
            params.append({"name": "removed", "part": [{"name": "type", "valueCode": rtype},
                                                       {"name": "resources", "valueInteger": n["resources"]},
                                                       {"name": "versions", "valueInteger": n["versions"]}]})
    return Result(status=200, resource={"resourceType": "Parameters", "parameter": params},
                  headers={"Content-Location": ctx.url(f"AuditEvent/{job['receipt_id']}")})
