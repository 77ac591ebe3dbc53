"""Who reads the audit trail (issue 10, item 4), as one more policy at the decision point.

* A patient reads the AuditEvents of their own record: the compartment rules of their token
  already confine `AuditEvent?patient=…` to them; nothing to add.
* A professional reads only the AuditEvents where they are an agent (what they did), never what
  other professionals did in a record they are authorized on: a database filter on the `agent`
  index field, and the same check on each AuditEvent returned.
* Refused or failed attempts are filed under the patient whose record they were about (their
  access history flags them): only that patient and the auditors read them. The one who tried
  does not, since such an event names the record a hidden resource belongs to (an existence
  oracle): a professional reads their successful accesses (outcome 0), a patient the events of
  their own record and their own successful acts.
* A system client with an AuditEvent scope (`system/AuditEvent.rs`, or `system/*.rs` of an
  operator service) reads every AuditEvent; its scopes decide, this policy abstains.

Reading the audit is audited like any read (records/audit.py); the events it writes are not read
through `Records`, so there is no recursion.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from fhir_server.access.decision import Policy
from fhir_server.auth.principal import Principal
from fhir_server.fhir.interactions import Interaction
from fhir_server.search.mongo import NOTHING
from fhir_server.search.registry import REFERENCE, TOKEN, field_name

AUDIT = "AuditEvent"
AGENT_FIELD = field_name(REFERENCE, "agent")
ENTITY_FIELD = field_name(REFERENCE, "entity")
OUTCOME_FIELD = field_name(TOKEN, "outcome")
SUCCESS = "0"


def _is_professional(principal: Principal) -> bool:
    return principal.kind == "user" and principal.role == "practitioner"


def _is_patient(principal: Principal) -> bool:
    return principal.kind == "user" and principal.user_patient is not None


def _refs(items, key: str) -> set[str]:
    return {r for x in items or () if isinstance(x, dict) and isinstance(r := (x.get(key) or {}).get("reference"), str)}


class AuditReaders(Policy):
    async def prepare(self, principal: Principal, ix: Interaction, reader) -> object | None:
        return self if _is_professional(principal) or _is_patient(principal) else None

    def restricts(self, principal: Principal, state, perm: str, rtype: str) -> bool:
        return rtype == AUDIT

    def db_filter(self, principal: Principal, state, perm: str, rtype: str,
                  within: AbstractSet[str] | None) -> dict | None:
        if rtype != AUDIT:
            return None
        if _is_patient(principal):  # within their compartment (their scopes' filter): not others' refusals
            return {"$or": [{OUTCOME_FIELD: SUCCESS}, {ENTITY_FIELD: f"Patient/{principal.user_patient}"}]}
        if not principal.fhir_user:
            return NOTHING
        return {AGENT_FIELD: {"$in": [principal.fhir_user]}, OUTCOME_FIELD: SUCCESS}

    def may_read(self, principal: Principal, state, rtype: str, resource: dict) -> bool | None:
        if rtype != AUDIT:
            return None
        if _is_patient(principal):
            return resource.get("outcome") == SUCCESS or f"Patient/{principal.user_patient}" in _refs(
                resource.get("entity"), "what")
        return (bool(principal.fhir_user) and resource.get("outcome") == SUCCESS
                and principal.fhir_user in _refs(resource.get("agent"), "who"))
