"""The single access decision point: every interaction and every returned resource passes here.

Callers never decide access themselves. Today the server runs without authentication (no SMART
authorization server yet), so the only principal is the anonymous developer and every decision is
`permit`; SMART scopes, patient consent and security labels plug in here without touching the
endpoints. The shape follows IHE PCF enforcement: deny, permit, or permit-with-filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Effect(Enum):
    PERMIT = "permit"
    DENY = "deny"
    FILTER = "permit-with-filter"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user (patient, professional, admin), a client, scopes and launch context."""

    kind: str = "anonymous"  # anonymous | user | client
    subject: str | None = None
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    patient: str | None = None  # launch context patient id
    purpose_of_use: tuple[str, ...] = ()


ANONYMOUS = Principal()


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reason: str = ""
    filters: dict = field(default_factory=dict)


PERMIT = Decision(Effect.PERMIT)


class AccessDecisionPoint:
    """Answers for (principal, interaction, resource type, resource). Stateless and cheap."""

    def decide(self, principal: Principal, interaction: str, rtype: str | None) -> Decision:
        return PERMIT

    def may_see(self, principal: Principal, rtype: str, resource_json: bytes | dict) -> bool:
        """Per-resource filter applied to every resource returned, whatever path reached it."""
        return True
