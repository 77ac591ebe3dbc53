"""Records the server itself writes into a patient's record so the patient is told: today, the
declaration of an emergency (break-glass) access.

A professional who declares break-glass for a patient gets a token for that patient alone, for a
bounded time; before the token is issued, an AuditEvent is stored in the patient's compartment
(`AuditEvent?patient=…` finds it, with the professional, the application and the reason), after
IHE BALP's conventions: type DICOM 110113 "Security Alert", subtype 110127 "Emergency Override
Started", purposeOfEvent v3-ActReason BTG. Every access made with the token is then decided by
consent like any other (a block or a refusal of emergency access wins) and audited by the audit
hooks. https://hl7.org/fhir/R4/auditevent.html, https://profiles.ihe.net/ITI/BALP/.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fhir_server.fhir.validation import validate_resource

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BTG = {"system": ACT_REASON, "code": "BTG", "display": "break the glass"}
CLIENT_SYSTEM = "urn:fhir-dmp:client-id"


def break_glass_event(info: dict, now: datetime | None = None) -> dict:
    now = now or datetime.now(UTC)
    reason = str(info.get("reason") or "")
    user = {"reference": info["fhir_user"]} if info.get("fhir_user") else {"display": str(info.get("user"))}
    if info.get("name"):
        user["display"] = str(info["name"])
    event = {
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": "110113", "display": "Security Alert"},
        "subtype": [{"system": DCM, "code": "110127", "display": "Emergency Override Started"}],
        "action": "E",
        "recorded": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": "0",
        "outcomeDesc": f"emergency access declared for {int(info.get('seconds') or 0)} seconds",
        "purposeOfEvent": [{"coding": [BTG], "text": reason}],
        "agent": [
            {"who": user, "requestor": True, "purposeOfUse": [{"coding": [BTG], "text": reason}]},
            {"who": {"identifier": {"system": CLIENT_SYSTEM, "value": str(info.get("client_id"))}},
             "requestor": False},
        ],
        "source": {"observer": {"display": "fhir-server authorization server"}},
        "entity": [{"what": {"reference": f"Patient/{info['patient']}"},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
                    "description": reason}],
    }
    validate_resource(event, expected_type="AuditEvent")
    return event


class BreakGlassLog:
    """Writes the break-glass AuditEvent (system-generated: not on anyone's behalf, so not through
    a caller's `Records`) to the audit trail, on its hash chain like every other AuditEvent."""

    def __init__(self, trail) -> None:
        self.trail = trail

    async def declared(self, info: dict) -> None:
        await self.trail.store([{"id": str(uuid.uuid4()), **break_glass_event(info)}])
