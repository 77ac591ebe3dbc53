"""AuditEvents of the authorization server (issue 10, item 1): sign-ins, token issuance and refresh,
revocation, after IHE BALP / IUA (https://profiles.ihe.net/ITI/BALP/):

* sign-in: DICOM 110114 "User Authentication", subtype 110122 "Login", outcome 0 or 4;
* a token issued (authorization code, refresh, client credentials) or refused: 110114 with
  subtype `urn:ihe:event-type-code#ITI-71` "Get Access Token" (BALP's IHE.IUA.71 profile): the
  token request as a Query entity (role 24) holding only the harmless form fields (grant type,
  scope, client id, redirect URI: never a code, verifier, refresh token, secret or assertion), and
  the token as a Security Resource entity (role 13) named by its `jti`, never the token;
* a revocation: 110114 with subtype 110123 "Logout" (the end of an access), naming the token's
  `jti` or the grant a refresh token belonged to.

Each event names the user (their fhirUser, else the account), the application (client id and
network address) and this server; a token for a patient's record carries the Patient entity, so the
patient's access history shows which application was let in, and a break-glass token its purpose
of use and reason. Built here (pure), stored by the composition root's sink: the audit trail
(records/trail.py), which the auth layer may not import.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlencode

DCM = "http://dicom.nema.org/resources/ontology/DCM"
IHE_EVENTS = "urn:ihe:event-type-code"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ROLE_SYSTEM = "urn:fhir-dmp:role"
CLIENT_SYSTEM = "urn:fhir-dmp:client-id"
USER_SYSTEM = "urn:fhir-dmp:user"
TOKEN_SYSTEM = "urn:fhir-dmp:token-id"
USER_AUTHENTICATION = {"system": DCM, "code": "110114", "display": "User Authentication"}
LOGIN = {"system": DCM, "code": "110122", "display": "Login"}
LOGOUT = {"system": DCM, "code": "110123", "display": "Logout"}
GET_ACCESS_TOKEN = {"system": IHE_EVENTS, "code": "ITI-71", "display": "Get Access Token"}
SAFE_FORM_FIELDS = ("grant_type", "scope", "client_id", "redirect_uri")

AuditSink = Callable[[list[dict]], Awaitable[None]]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _user_agent(user: dict) -> dict:
    who: dict = {"reference": user["fhir_user"]} if user.get("fhir_user") else {
        "identifier": {"system": USER_SYSTEM, "value": str(user.get("username") or "unknown")}}
    agent: dict = {"type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
                   "who": who, "requestor": True}
    if user.get("name"):
        agent["name"] = str(user["name"])
    if user.get("role"):
        agent["role"] = [{"coding": [{"system": ROLE_SYSTEM, "code": str(user["role"])}]}]
    if user.get("purpose_of_use"):
        agent["purposeOfUse"] = [_purpose(user["purpose_of_use"], user.get("btg_reason"))]
    return agent


def _purpose(code: str, reason: str | None) -> dict:
    concept: dict = {"coding": [{"system": ACT_REASON, "code": code}]}
    if reason:
        concept["text"] = reason
    return concept


def event(subtype: dict, *, outcome: str, user: dict | None, client_id: str | None, address: str | None,
          server: str, patient: str | None = None, description: str | None = None,
          entities: list[dict] | None = None) -> dict:
    """One BALP AuditEvent of the authorization server. `user`: {username, fhir_user, name, role,
    purpose_of_use, btg_reason} (None for a backend client acting on its own)."""
    agents = [_user_agent(user)] if user is not None else []
    if client_id is not None or user is None:
        client: dict = {"type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": str(client_id or "unknown")}},
                        "requestor": user is None}
        if address:
            client["network"] = {"address": address, "type": "2"}
        agents.append(client)
    agents.append({"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
                   "who": {"display": "fhir-server authorization server"}, "requestor": False,
                   "network": {"address": server, "type": "5"}})
    out: dict = {
        "resourceType": "AuditEvent", "id": str(uuid.uuid4()),
        "type": USER_AUTHENTICATION, "subtype": [subtype], "action": "E", "recorded": _now(), "outcome": outcome,
        "agent": agents,
        "source": {"site": "fhir-server", "observer": {"display": "fhir-server authorization server"},
                   "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
    }
    if description:
        out["outcomeDesc"] = description[:1000]
    if user is not None and user.get("purpose_of_use"):
        out["purposeOfEvent"] = [_purpose(user["purpose_of_use"], user.get("btg_reason"))]
    ents = []
    if patient:
        ents.append({"what": {"reference": f"Patient/{patient}"},
                     "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                     "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}})
    ents += entities or []
    if ents:
        out["entity"] = ents
    return out


def token_request(form) -> dict:
    """The token request as BALP's Query entity: only fields that grant nothing."""
    kept = [(name, str(form.get(name))) for name in SAFE_FORM_FIELDS if form.get(name)]
    return {"type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "query": base64.b64encode(urlencode(kept).encode()).decode()}


def token_response(jti: str, details: dict[str, str]) -> dict:
    """The issued token, named by its id (`jti`), with the response's key values."""
    return {"what": {"identifier": {"system": TOKEN_SYSTEM, "value": jti}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"},
            "detail": [{"type": k, "valueString": v} for k, v in details.items() if v]}


def revoked(what: str) -> dict:
    """A revoked token or grant (`jti:…`, `grant:…`: identifiers, not credentials)."""
    return {"what": {"identifier": {"system": TOKEN_SYSTEM, "value": what}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"}}
