"""`Patient/{id}/$explain-access`: the patient asks "can this professional see my record, or this
document of it, and why?" (a server-defined operation; OperationDefinition in the
CapabilityStatement).

    GET [base]/Patient/{id}/$explain-access?actor=Practitioner/{pid}[&resource=DocumentReference/{did}][&action=read|add]

The answer is a Parameters resource: `allowed` (boolean), `reason` (text), `recordState` (open,
closed, none), each `basis` (the Consents, the label or the site policy that decided) and each
`actorIdentity` considered (the Practitioner, their PractitionerRoles and Organizations). Only the
patient (about their own record) and administrators may ask; the answer comes from the same rules
that enforce every request (fhir_server/access/consent.py).
"""

from __future__ import annotations

from fhir_server.fhir.outcome import FhirError
from fhir_server.rest.context import RequestContext
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result

ACTIONS = ("read", "add")


def _basis(value: str) -> dict:
    if value.startswith("Consent/"):
        return {"name": "basis", "valueReference": {"reference": value}}
    return {"name": "basis", "valueString": value}


async def explain_access(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.type != "Patient" or ix.id is None:
        raise FhirError(400, "not-supported", "$explain-access is an operation on one Patient: Patient/{id}/$explain-access")
    actor = ix.param("actor")
    if not actor:
        raise FhirError(400, "required", "actor is required (Practitioner/{id} or Organization/{id})", ["actor"])
    action = ix.param("action") or "read"
    if action not in ACTIONS:
        raise FhirError(400, "value", "action is read or add", ["action"])
    answers = await ctx.data.explain_access(ix.id, actor, ix.param("resource"), action)
    if not answers:
        raise FhirError(501, "not-supported", "no access policy that explains itself is configured")
    answer = answers[0]
    params = [{"name": "allowed", "valueBoolean": bool(answer["allowed"])},
              {"name": "reason", "valueString": str(answer["reason"])},
              {"name": "recordState", "valueCode": str(answer["record"])}]
    params += [_basis(str(b)) for b in answer["basis"]]
    params += [{"name": "actorIdentity", "valueReference": {"reference": i}} for i in answer["identities"]]
    return Result(status=200, resource={"resourceType": "Parameters", "parameter": params})
