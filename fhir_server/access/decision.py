"""The single access decision point: every interaction and every returned resource passes here.

Callers never decide access themselves. The inputs are who is asking (a `Principal`: user,
client, SMART scopes, launch context, purpose of use), the interaction and resource type, and —
for per-resource questions — the resource itself. The answer follows IHE PCF enforcement:

* `deny` — the endpoint answers 403 (insufficient scope);
* `permit` — nothing further to check;
* `permit-with-filter` — allowed, but only on resources satisfying `Decision.filters["rules"]`
  (the launch patient's compartment for patient/ scopes, a granular scope's query…). Reads,
  searches and history apply it through `may_see` on every resource they return; instance-level
  writes, history and operations go through `enforce`, which checks the stored and the incoming
  resource before the handler runs.

Consent rules and security labels plug in as `Policy` objects (`AccessDecisionPoint.policies`),
consulted after the scopes, without touching the endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import orjson

from fhir_server.access.compartment import OUTSIDE, in_patient_compartment, matches_query
from fhir_server.auth.scopes import ALL, INTERACTION_PERM, Rule, ScopeSet
from fhir_server.fhir.outcome import FhirError, not_found
from fhir_server.rest import interaction as k


class Effect(Enum):
    PERMIT = "permit"
    DENY = "deny"
    FILTER = "permit-with-filter"


@dataclass(frozen=True, slots=True, eq=False)
class Principal:
    """Who is asking: a user (patient, professional, admin) through a client, or a backend client
    on its own, with the token's scopes and launch context."""

    kind: str = "anonymous"  # anonymous | user | client | developer (insecure dev mode only)
    subject: str | None = None  # the user id (sub), or the client id for backend services
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    patient: str | None = None  # launch context patient id
    purpose_of_use: tuple[str, ...] = ()
    fhir_user: str | None = None  # e.g. "Practitioner/123" or "Patient/456"
    encounter: str | None = None
    unrestricted: bool = False  # only the insecure-dev-mode principal
    grants: ScopeSet | None = None  # parsed scopes (built from `scopes` when not given)

    def __post_init__(self) -> None:
        if self.grants is None:
            user_patient = None
            if self.fhir_user and self.fhir_user.startswith("Patient/"):
                user_patient = self.fhir_user[len("Patient/"):]
            object.__setattr__(self, "grants", ScopeSet.parse(self.scopes, self.patient, user_patient))


ANONYMOUS = Principal()
DEVELOPER = Principal(kind="developer", subject="insecure-dev-mode", unrestricted=True)


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reason: str = ""
    filters: dict = field(default_factory=dict)


PERMIT = Decision(Effect.PERMIT)


class Policy(Protocol):
    """A further rule (patient consent, security labels…). Return None to abstain."""

    def decide(self, principal: Principal, interaction: str, rtype: str | None, ix) -> Decision | None: ...

    def may_see(self, principal: Principal, rtype: str, resource: dict) -> bool | None: ...


def _satisfies(rtype: str, resource: dict, rules) -> bool:
    if rules == ALL:
        return True
    for rule in rules:
        if rule.patient is not None and rtype not in OUTSIDE and not in_patient_compartment(
                rtype, resource, rule.patient):
            continue
        if rule.query and not matches_query(rtype, resource, rule.query):
            continue
        return True
    return False


def _operation_perm(ix) -> str:
    if ix is not None and ix.id is not None:
        return "r"  # instance-level operations ($validate of a stored resource) read it
    return "c"  # type-level $validate checks a candidate resource about to be created


class AccessDecisionPoint:
    """Answers for (principal, interaction, resource type, resource). Stateless and cheap."""

    def __init__(self, policies: list[Policy] | None = None) -> None:
        self.policies = list(policies or ())

    # --- interaction level -----------------------------------------------------------------------

    def decide(self, principal: Principal, interaction: str, rtype: str | None, ix=None) -> Decision:
        decision = self._by_scopes(principal, interaction, rtype, ix)
        if decision.effect is not Effect.DENY:
            for policy in self.policies:
                refined = policy.decide(principal, interaction, rtype, ix)
                if refined is not None and refined.effect is Effect.DENY:
                    return refined
        return decision

    def _by_scopes(self, principal: Principal, interaction: str, rtype: str | None, ix) -> Decision:
        if principal.unrestricted or interaction == k.CAPABILITIES:
            return PERMIT
        if principal.kind == "anonymous":
            return Decision(Effect.DENY, "authentication is required")
        if interaction == k.BUNDLE:
            return PERMIT  # every entry is decided on its own
        perm = _operation_perm(ix) if interaction == k.OPERATION else INTERACTION_PERM.get(interaction)
        if perm is None:
            return Decision(Effect.DENY, f"'{interaction}' is not permitted")
        rules = principal.grants.access(perm, rtype)
        if not rules:
            what = rtype or "the system"
            return Decision(Effect.DENY, f"the token's scopes do not permit {interaction} on {what}")
        if rules == ALL:
            return PERMIT
        return Decision(Effect.FILTER, "restricted by scope", {"perm": perm, "rules": rules})

    # --- resource level --------------------------------------------------------------------------

    def _see_rules(self, principal: Principal, rtype: str):
        grants = principal.grants
        key = ("see", rtype)
        rules = grants._cache.get(key)
        if rules is None:
            r, s = grants.access("r", rtype), grants.access("s", rtype)
            if r == ALL or s == ALL:
                rules = ALL
            else:
                rules = tuple(dict.fromkeys(r + s))
            grants._cache[key] = rules
        return rules

    def may_see(self, principal: Principal, rtype: str, resource_json: bytes | dict) -> bool:
        """Per-resource filter applied to every resource returned, whatever path reached it."""
        if principal.unrestricted:
            return True
        rules = self._see_rules(principal, rtype)
        if not rules:
            return False
        if rules == ALL and not self.policies:
            return True
        resource = orjson.loads(resource_json) if isinstance(resource_json, (bytes, bytearray, memoryview)) \
            else resource_json
        if not isinstance(resource, dict) or not _satisfies(rtype, resource, rules):
            return False
        for policy in self.policies:
            if policy.may_see(principal, rtype, resource) is False:
                return False
        return True

    def permits_resource(self, decision: Decision, rtype: str, resource: dict) -> bool:
        return _satisfies(rtype, resource, decision.filters.get("rules", ALL))

    # --- enforcement of permit-with-filter before a handler runs -------------------------------------

    async def enforce(self, ctx, ix, decision: Decision) -> None:
        """Check what `may_see` cannot: the stored resource an instance-level interaction acts on
        and the content a write would store. Raises FhirError; 404 when the caller may not know the
        resource exists."""
        if decision.effect is not Effect.FILTER:
            return
        kind = ix.kind
        if kind in (k.READ, k.VREAD):
            return  # the handler applies may_see to the version it found
        if kind in (k.SEARCH_TYPE, k.SEARCH_SYSTEM):
            return  # the search compiles decision.filters into its query (access/query.py)
        if kind in (k.HISTORY_TYPE, k.HISTORY_SYSTEM):
            # Delete tombstones carry no content to check compartment membership against.
            raise FhirError(403, "forbidden", "type and system history are not available to tokens restricted to "
                                              "a patient or a granular scope; use instance history")
        rules = decision.filters["rules"]
        if kind in (k.HISTORY_INSTANCE, k.UPDATE, k.PATCH, k.DELETE, k.OPERATION) and ix.id is not None:
            stored = await _last_content(ctx, ix.type, ix.id)
            if stored is not None and not (_satisfies(ix.type, stored, rules)
                                           and self.may_see(ctx.principal, ix.type, stored)):
                raise not_found(ix.type, ix.id)
            if stored is None and kind in (k.HISTORY_INSTANCE, k.OPERATION, k.PATCH, k.DELETE):
                return  # the handler answers 404 / 410 / 204 as usual
            if kind == k.PATCH and stored is not None:
                patched = await _patched(ctx, ix)
                if patched is not None and not _satisfies(ix.type, patched, rules):
                    raise FhirError(403, "forbidden", "the patched resource would fall outside what the token permits")
        if kind in (k.CREATE, k.UPDATE):
            incoming = _incoming(ix)
            if incoming is not None and not _satisfies(ix.type, incoming, rules):
                raise FhirError(403, "forbidden", f"the token does not permit writing this {ix.type} "
                                                  "(outside the patient in context or the granted categories)")


async def _last_content(ctx, rtype: str, rid: str) -> dict | None:
    """The newest stored content of a resource (the version before its deletion if deleted)."""
    v = await ctx.repo.read(rtype, rid, session=ctx.session)
    if v is None:
        latest = await ctx.repo.latest(rtype, rid, session=ctx.session)
        if latest is None or latest.version <= 1:
            return None
        v = await ctx.repo.vread(rtype, rid, latest.version - 1)
    if v is None or v.json is None:
        return None
    return orjson.loads(v.json)


def _incoming(ix) -> dict | None:
    if ix.resource is not None:
        return ix.resource
    if ix.type == "Binary":
        ct = (ix.header("content-type") or "").split(";")[0].strip()
        if ct and "json" not in ct:
            ref = ix.header("x-security-context")
            return {"resourceType": "Binary", **({"securityContext": {"reference": ref}} if ref else {})}
    try:
        body = orjson.loads(ix.body or b"")
    except orjson.JSONDecodeError:
        return None  # the handler rejects it with 400
    return body if isinstance(body, dict) else None


async def _patched(ctx, ix) -> dict | None:
    import jsonpatch

    from fhir_server.rest.handlers.patch import _operations

    try:
        ops = jsonpatch.JsonPatch(_operations(ix))
        current = await ctx.repo.read(ix.type, ix.id, session=ctx.session)
        return ops.apply(orjson.loads(current.json)) if current is not None else None
    except Exception:
        return None  # the handler reports the invalid patch
