"""The access decision point: scopes plus policies, answering permit, deny or permit-with-filter.

Pure: no I/O and no HTTP parsing. Whatever a policy needs from the database it loads once per
interaction in its async `prepare` (IHE PCF's consent lookup, break-glass state…); after that every
question is answered from memory, so the records layer (fhir_server/records/) can ask it for every
read, search, count and write of the interaction without cost.

The answers, after IHE PCF's authorization decision:

* `deny` — 403 (insufficient scope, or a policy refuses);
* `permit` — every resource of the type;
* `permit-with-filter` — only the resources satisfying the scope rules (the launch patient's
  compartment, a granular scope's query) and every active policy's database filter. Records merge
  that filter into the query *and* the count, so totals and keyset paging stay exact, and check
  each resource again (`may_read`) as a second line of defence; writes are checked on the stored
  resource and on the resource as it will be stored (`write_problem`).

The decision for one interaction is computed once per (permission, type) and cached in its
`Access`; a policy that abstains for a caller (its `prepare` returns None) costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum

import orjson

from fhir_server.access.compartment import OUTSIDE, about_patients, in_patient_compartment, is_about_only, matches_query
from fhir_server.access.filters import rules_filter
from fhir_server.auth.principal import Principal
from fhir_server.auth.scopes import ALL
from fhir_server.fhir import interactions as k
from fhir_server.fhir.interactions import Interaction


class Effect(Enum):
    PERMIT = "permit"
    DENY = "deny"
    FILTER = "permit-with-filter"


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reason: str = ""
    rules: object = ALL  # ALL, or a tuple of auth.scopes.Rule: a resource must satisfy one


PERMIT = Decision(Effect.PERMIT)
DESTROY_NOW, DESTROY_AFTER_GRACE, DESTROY_NEVER = "now", "after-grace", "never"


def deny(reason: str) -> Decision:
    return Decision(Effect.DENY, reason)


# SMART v2 permission letter of each interaction (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html)
PERMISSION = {
    k.CREATE: "c", k.READ: "r", k.VREAD: "r", k.HISTORY_INSTANCE: "r", k.UPDATE: "u", k.PATCH: "u",
    k.DELETE: "d", k.SEARCH_TYPE: "s", k.SEARCH_SYSTEM: "s", k.HISTORY_TYPE: "s", k.HISTORY_SYSTEM: "s",
}


# operations whose answer is made of another type's data than the one they are invoked on: the
# permission is asked on that type (`Patient/{id}/$access-history` reads the record's AuditEvents)
OPERATION_TARGETS = {"access-history": ("s", "AuditEvent")}


def required(ix: Interaction) -> tuple[str, str | None] | None:
    """(permission, type) an interaction needs as a whole (None: nothing to check at that level)."""
    if ix.kind == k.OPERATION and ix.operation in OPERATION_TARGETS:
        return OPERATION_TARGETS[ix.operation]
    perm = permission(ix)
    return None if perm is None else (perm, ix.type)


def permission(ix: Interaction) -> str | None:
    """The permission an interaction needs as a whole (None: nothing to check at that level)."""
    if ix.kind == k.OPERATION:
        if ix.operation == "export":  # a bulk export is a search of every type it covers
            return "s"
        # instance-level operations ($validate of a stored resource) read it; type-level $validate
        # checks a candidate resource about to be created
        return "r" if ix.id is not None else "c"
    return PERMISSION.get(ix.kind)


def principal_key(p: Principal) -> str:
    """Who owns something a principal started (a bulk export job): the same user through the same
    client, or the same backend client. A new token of the same principal is the same owner."""
    return "|".join([p.kind, str(p.subject or ""), str(p.client_id or "")])


class Policy:
    """A further rule after the scopes (patient consent, security labels…). Every method may
    abstain; the defaults do. Subclass and override what the rule needs.

    Decisions (`decide`, `db_filter`, `may_read`, `write_problem`) are pure and answer from the
    policy's per-interaction state; whatever they need from the database is fetched before, in
    `prepare` (once) and `load` (per patient, or for every patient the caller may reach; called by
    `Access` before each decision that needs it, and cheap when already loaded)."""

    async def prepare(self, principal: Principal, ix: Interaction, reader) -> object | None:
        """Load what this interaction's decisions need (once). None: abstain for this interaction."""
        return self

    async def load(self, principal: Principal, state, rtype: str, patients: AbstractSet[str] | None,
                   resource: dict | None = None) -> None:
        """Fetch what decisions about resources of `rtype` of these patients need (None: of every
        patient whose data a search of `rtype` may reach); `resource`, when the decision is about one."""
        return None

    def decide(self, principal: Principal, state, perm: str, rtype: str | None) -> Decision | None:
        """A DENY refuses the permission on the type; anything else abstains."""
        return None

    def restricts(self, principal: Principal, state, perm: str, rtype: str) -> bool:
        """Whether this policy may narrow what `perm` reaches of `rtype` (a filter, per-resource checks)."""
        return False

    def db_filter(self, principal: Principal, state, perm: str, rtype: str,
                  within: AbstractSet[str] | None) -> dict | None:
        """A condition every resource reached must also satisfy (ANDed into queries and counts).
        `within`: the patients the query is already confined to (None: not confined)."""
        return None

    def may_read(self, principal: Principal, state, rtype: str, resource: dict) -> bool | None:
        """False hides one resource (must agree with db_filter)."""
        return None

    def write_problem(self, principal: Principal, state, perm: str, rtype: str, before: dict | None,
                      after: dict | None) -> tuple[int, str] | str | None:
        """Why this write is refused: a reason (403), or (status, reason); None to abstain."""
        return None

    async def explain(self, principal: Principal, state, reader, patient: str, actor: str, resource: dict | None,
                      rtype: str | None, action: str) -> dict | None:
        """Why `actor` may or may not perform `action` on `patient`'s record (or on `resource` of
        it): {"allowed": bool, "reason": str, "basis": [...], …}; None when this policy has no say.
        `state` is the caller's (None when the policy abstains for the caller); the policy refuses
        (raises PermissionError) a caller it does not let ask."""
        return None

    def may_learn_existence(self, principal: Principal, state) -> bool | None:
        """Whether a caller this policy hides records from may be told that a record exists for an
        exact national identifier (the DMP's existence check); None to abstain."""
        return None

    def destruction(self, principal: Principal, state, patient: str) -> str | None:
        """Whether this caller may have `patient`'s closed record destroyed: DESTROY_NOW (their own
        explicit request), DESTROY_AFTER_GRACE (on the patient's documented request, once the grace
        period has ended), DESTROY_NEVER; None to abstain."""
        return None


class AccessDecisionPoint:
    """Holds the policies; `prepare` gives the per-interaction `Access` that answers questions."""

    def __init__(self, policies: Sequence[Policy] = ()) -> None:
        self.policies = tuple(policies)

    def scopes_refuse(self, principal: Principal, perm: str, rtype: str | None) -> Decision | None:
        """The scopes' refusal of `perm` on `rtype`, known before any policy prepares: a request
        the token cannot make at all costs no database work (a read-only token's 1000-entry batch
        of creates is refused entry by entry without reading consents)."""
        decision = _by_scopes(principal, perm, rtype)
        return decision if decision.effect is Effect.DENY else None

    async def prepare(self, principal: Principal, ix: Interaction, reader=None) -> Access:
        active = []
        if not principal.unrestricted:
            for policy in self.policies:
                state = await policy.prepare(principal, ix, reader)
                if state is not None:
                    active.append((policy, state))
        return Access(principal, tuple(active), self.policies, reader)


def _by_scopes(principal: Principal, perm: str, rtype: str | None) -> Decision:
    if principal.unrestricted:
        return PERMIT
    if principal.kind == "anonymous":
        return deny("authentication is required")
    rules = principal.scope_set.access(perm, rtype)
    if not rules:
        return deny("")
    if rules == ALL:
        return PERMIT
    return Decision(Effect.FILTER, "restricted by scope", rules)


def _satisfies(rtype: str, resource: dict, rules) -> bool:
    """Read semantics: in the compartment of a rule's patient (types outside it: anyone's)."""
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


def _writable(rtype: str, resource: dict, rules) -> bool:
    """Write semantics: about the rule's patient and nobody else (never a directory type)."""
    if rules == ALL:
        return True
    for rule in rules:
        if rule.patient is not None and not is_about_only(rtype, resource, rule.patient):
            continue
        if rule.query and not matches_query(rtype, resource, rule.query):
            continue
        return True
    return False


class Access:
    """The decisions of one interaction for one principal, cached. Pure but for the policies' `load`
    calls, which fetch (once) what a decision about some patients' data needs."""

    __slots__ = ("principal", "_active", "_decisions", "_filters", "_policies", "_reader")

    def __init__(self, principal: Principal, active: tuple, policies: tuple = (), reader=None) -> None:
        self.principal = principal
        self._active = active
        self._policies = policies
        self._reader = reader
        self._decisions: dict = {}
        self._filters: dict = {}

    @property
    def unrestricted(self) -> bool:
        return self.principal.unrestricted

    def decide(self, perm: str, rtype: str | None) -> Decision:
        key = (perm, rtype)
        hit = self._decisions.get(key)
        if hit is not None:
            return hit
        decision = _by_scopes(self.principal, perm, rtype)
        if decision.effect is not Effect.DENY:
            for policy, state in self._active:
                refused = policy.decide(self.principal, state, perm, rtype)
                if refused is not None and refused.effect is Effect.DENY:
                    decision = refused
                    break
                if rtype is not None and decision.effect is Effect.PERMIT and policy.restricts(
                        self.principal, state, perm, rtype):
                    decision = Decision(Effect.FILTER, "restricted by policy", ALL)
        self._decisions[key] = decision
        return decision

    async def _load(self, rtype: str, patients: AbstractSet[str] | None, resource: dict | None = None) -> None:
        for policy, state in self._active:
            await policy.load(self.principal, state, rtype, patients, resource)

    async def filter(self, perm: str, rtype: str, within: AbstractSet[str] | None = None) -> dict | None:
        """The database filter restricting `rtype` to what may be reached with `perm`: {} for
        everything, None when denied. `within`: the patients the query is already confined to
        (lets a policy answer for those few instead of every patient the caller may reach)."""
        key = (perm, rtype, frozenset(within) if within is not None else None)
        if key in self._filters:
            return self._filters[key]
        decision = self.decide(perm, rtype)
        flt: dict | None
        if decision.effect is Effect.DENY:
            flt = None
        else:
            parts = [rules_filter(rtype, decision.rules)]
            if decision.effect is Effect.FILTER and self._active:
                await self._load(rtype, key[2])
                for policy, state in self._active:
                    parts.append(policy.db_filter(self.principal, state, perm, rtype, key[2]) or {})
            parts = [p for p in parts if p]
            flt = {} if not parts else parts[0] if len(parts) == 1 else {"$and": parts}
        self._filters[key] = flt
        return flt

    async def may_read(self, perm: str, rtype: str, resource: bytes | dict | None) -> bool:
        """Per-resource check of a resource about to be disclosed (the second line of defence)."""
        decision = self.decide(perm, rtype)
        if decision.effect is Effect.DENY:
            return False
        if decision.effect is Effect.PERMIT:
            return True
        if resource is None:
            return False
        doc = orjson.loads(resource) if isinstance(resource, (bytes, bytearray, memoryview)) else resource
        if not isinstance(doc, dict) or not _satisfies(rtype, doc, decision.rules):
            return False
        if not self._active:
            return True
        await self._load(rtype, about_patients(rtype, doc), doc)
        return all(policy.may_read(self.principal, state, rtype, doc) is not False for policy, state in self._active)

    async def explain(self, patient: str, actor: str, resource: dict | None, rtype: str | None,
                      action: str) -> list[dict]:
        """Each policy's explanation of `actor`'s access to `patient`'s record (PermissionError when
        the caller may not ask)."""
        states = dict((id(p), s) for p, s in self._active)
        out = []
        for policy in self._policies:
            answer = await policy.explain(self.principal, states.get(id(policy)), self._reader, patient, actor,
                                          resource, rtype, action)
            if answer is not None:
                out.append(answer)
        return out

    def owns(self, key: str | None) -> bool:
        """Whether this caller is the principal `key` names (principal_key): only they reach what
        they started (a bulk export's status and files); everyone else is told nothing (404)."""
        return key is not None and key == principal_key(self.principal)

    def may_learn_existence(self) -> bool:
        """Whether this caller may be told that a record exists for an exact INS it searched for."""
        answers = [policy.may_learn_existence(self.principal, state) for policy, state in self._active]
        return any(a is True for a in answers) and not any(a is False for a in answers)

    def destruction(self, patient: str) -> str:
        """When this caller's request to destroy `patient`'s record may run (Policy.destruction): a
        refusal by any policy wins; services that no policy binds (operators) wait for the grace
        period, like administrators; a caller no policy speaks for may not."""
        answers = [policy.destruction(self.principal, state, patient) for policy, state in self._active]
        if DESTROY_NEVER in answers:
            return DESTROY_NEVER
        if DESTROY_NOW in answers:
            return DESTROY_NOW
        if DESTROY_AFTER_GRACE in answers or self.principal.unrestricted or self.principal.operator:
            return DESTROY_AFTER_GRACE
        return DESTROY_NEVER

    async def write_problem(self, perm: str, rtype: str, before: dict | None,
                            after: dict | None) -> tuple[int, str] | None:
        """Why a write of `after` over `before` is refused ((status, reason)), None if it may
        proceed. The caller has already checked that `before` is visible (else it answers 404)."""
        decision = self.decide(perm, rtype)
        if decision.effect is Effect.DENY:
            return 403, decision.reason or f"the token's scopes do not permit this write on {rtype}"
        if decision.rules != ALL:
            if before is not None and not _writable(rtype, before, decision.rules):
                return 403, f"the token does not permit changing this {rtype} (outside the patient in context or " \
                            "the granted categories)"
            if after is not None and not _writable(rtype, after, decision.rules):
                return 403, f"the token does not permit writing this {rtype} (outside the patient in context or " \
                            "the granted categories)"
        if self._active:
            for doc in (before, after):
                if doc is not None:
                    await self._load(rtype, about_patients(rtype, doc), doc)
        for policy, state in self._active:
            problem = policy.write_problem(self.principal, state, perm, rtype, before, after)
            if problem:
                return problem if isinstance(problem, tuple) else (403, problem)
        return None
