"""`AuditEvent/$verify`: check every hash chain of the audit trail (records/trail.py) and report,
per broken chain, the first record altered, removed, inserted or reordered. An OperationOutcome:
`information` when every chain verifies, one `error` issue per broken chain otherwise. Only a
caller who may search all AuditEvents (unfiltered) may ask.
"""

from __future__ import annotations

from fhir_server.fhir.outcome import FhirError, Issue, operation_outcome
from fhir_server.rest.context import RequestContext
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result


async def verify(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.type != "AuditEvent" or ix.id is not None:
        raise FhirError(400, "not-supported", "$verify is an operation on the AuditEvent type: AuditEvent/$verify")
    findings, chains = await ctx.data.verify_audit()
    if not findings:
        issues = [Issue("information", "informational", f"{chains} audit chain(s) verified", [])]
    else:
        issues = [Issue("error", "integrity", _finding(f), []) for f in findings]
    return Result(status=200, resource=operation_outcome(issues))


def _finding(f: dict) -> str:
    which = f"record {f['seq']}" + (f" (AuditEvent/{f['id']})" if f.get("id") else "")
    return f"chain {f['chain']}: {which} {f['problem']}: {f['detail']}"
