"""Who reads the audit trail (issue 10, item 4), as one more policy at the decision point.

* A patient reads the AuditEvents of their own record: the compartment rules of their token
  already confine `AuditEvent?patient=…` to them; nothing to add.
* A professional reads only the AuditEvents where they are an agent (what they did), never what
  other professionals did in a record they are authorized on: a database filter on the `agent`
  index field, and the same check on each AuditEvent returned.
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
from fhir_server.search.registry import REFERENCE, field_name

AUDIT = "AuditEvent"
AGENT_FIELD = field_name(REFERENCE, "agent")


def _is_professional(principal: Principal) -> bool:
    return principal.kind == "user" and principal.role == "practitioner"


class AuditReaders(Policy):
    async def prepare(self, principal: Principal, ix: Interaction, reader) -> object | None:
        return self if _is_professional(principal) else None

    def restricts(self, principal: Principal, state, perm: str, rtype: str) -> bool:
        return rtype == AUDIT

    def db_filter(self, principal: Principal, state, perm: str, rtype: str,
                  within: AbstractSet[str] | None) -> dict | None:
        if rtype != AUDIT:
            return None
        return {AGENT_FIELD: {"$in": [principal.fhir_user]}} if principal.fhir_user else NOTHING

    def may_read(self, principal: Principal, state, rtype: str, resource: dict) -> bool | None:
        if rtype != AUDIT:
            return None
        return bool(principal.fhir_user) and any(
            isinstance(a, dict) and (a.get("who") or {}).get("reference") == principal.fhir_user
            for a in resource.get("agent") or ())
