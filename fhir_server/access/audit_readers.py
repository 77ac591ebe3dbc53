"""Who reads and who writes the audit trail (issue 10, items 4, 5 and 8), as one more policy at the
decision point.

Reading:
* A patient reads the AuditEvents of their own record: the compartment rules of their token
  already confine `AuditEvent?patient=…` to them; nothing to add.
* A professional reads only the AuditEvents where they are an agent (what they did), never what
  other professionals did in a record they are authorized on: a database filter on the `agent`
  index field, and the same check on each AuditEvent returned. For the same reason a professional
  may not ask a record's access history (`Patient/{id}/$access-history`, which needs the search
  permission on AuditEvent): it is the patient's and the auditors' view of everyone's acts. An
  attempt of theirs refused on a record they may not see is recorded in that patient's record
  (labelled `hidden-from-agent`) and is not shown to them: it would tell them whose record it was.
  The same holds for a patient who tried something on another patient's record: they read the
  events of their own record, and of their own acts but those labelled `hidden-from-agent`.
* A system client with an AuditEvent scope (`system/AuditEvent.rs`, or `system/*.rs` of an
  operator service) reads every AuditEvent; its scopes decide, this policy abstains.

Writing: the server writes its own AuditEvents through the audit trail (records/trail.py), never
on anyone's behalf. The only AuditEvents received from outside are those a *system client*
submits with an AuditEvent create scope (IHE ITI-20 "Record Audit Event", e.g. an EHR's own
trail; `system/AuditEvent.c`): users — patients, professionals, administrators — may not create
AuditEvents whatever their scopes, so nobody can plant events in a record's history.

Reading the audit is audited like any read (records/audit.py); the events it writes are not read
through `Records`, so there is no recursion.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from fhir_server.access.decision import Decision, Policy, deny
from fhir_server.auth.principal import Principal
from fhir_server.fhir import dmp
from fhir_server.fhir import interactions as k
from fhir_server.fhir.interactions import Interaction
from fhir_server.search.mongo import NOTHING
from fhir_server.search.registry import REFERENCE, TOKEN, field_name

AUDIT = "AuditEvent"
AGENT_FIELD = field_name(REFERENCE, "agent")
ENTITY_FIELD = field_name(REFERENCE, "entity")
SECURITY_FIELD = field_name(TOKEN, "_security")
HIDDEN_FROM_AGENT = f"{dmp.SECURITY_SYSTEM}|{dmp.HIDDEN_FROM_AGENT}"
ACCESS_HISTORY = "access-history"


@dataclass(frozen=True, slots=True)
class _Caller:
    professional: bool
    patient: str | None  # the patient the user is (fhirUser Patient/x)
    access_history: bool  # this interaction is Patient/{id}/$access-history


def _is_professional(principal: Principal) -> bool:
    return principal.kind == "user" and principal.role == "practitioner"


class AuditReaders(Policy):
    async def prepare(self, principal: Principal, ix: Interaction, reader) -> object | None:
        if principal.kind == "client":
            return None  # system clients: their scopes decide
        return _Caller(_is_professional(principal), principal.user_patient if principal.kind == "user" else None,
                       ix.kind == k.OPERATION and ix.operation == ACCESS_HISTORY)

    def decide(self, principal: Principal, state, perm: str, rtype: str | None) -> Decision | None:
        if rtype != AUDIT:
            return None
        if perm == "c":
            return deny("AuditEvents are written by this server; only a system client with an AuditEvent create "
                        "scope may submit them (IHE ITI-20)")
        if state.professional and state.access_history:
            return deny("a record's access history is for its patient and auditors; professionals read the "
                        "AuditEvents of their own acts (AuditEvent?agent=)")
        return None

    def restricts(self, principal: Principal, state, perm: str, rtype: str) -> bool:
        return rtype == AUDIT and (state.professional or state.patient is not None)

    def db_filter(self, principal: Principal, state, perm: str, rtype: str,
                  within: AbstractSet[str] | None) -> dict | None:
        if rtype != AUDIT:
            return None
        if not state.professional:  # a patient: within their compartment (their scopes' filter)
            return None if state.patient is None else {"$or": [
                {SECURITY_FIELD: {"$ne": HIDDEN_FROM_AGENT}}, {ENTITY_FIELD: f"Patient/{state.patient}"}]}
        if not principal.fhir_user:
            return NOTHING
        return {AGENT_FIELD: {"$in": [principal.fhir_user]}, SECURITY_FIELD: {"$ne": HIDDEN_FROM_AGENT}}

    def may_read(self, principal: Principal, state, rtype: str, resource: dict) -> bool | None:
        if rtype != AUDIT:
            return None
        if not state.professional:
            if state.patient is None:
                return None
            return dmp.HIDDEN_FROM_AGENT not in dmp.labels(resource) or any(
                isinstance(e, dict) and (e.get("what") or {}).get("reference") == f"Patient/{state.patient}"
                for e in resource.get("entity") or ())
        return bool(principal.fhir_user) and dmp.HIDDEN_FROM_AGENT not in dmp.labels(resource) and any(
            isinstance(a, dict) and (a.get("who") or {}).get("reference") == principal.fhir_user
            for a in resource.get("agent") or ())
