"""SMART App Launch scopes (v1 and v2): parsing, v1→v2 mapping and permission questions.

Grammar (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):

* v2: ``(patient|user|system)/(Type|*).[c][r][u][d][s][?param=value&...]`` — the permission letters
  appear at most once each, in that order; the optional query makes the scope *granular*
  (e.g. ``patient/DocumentReference.rs?category=http://loinc.org|11488-4``).
* v1: ``(patient|user|system)/(Type|*).(read|write|*)``, mapped to ``rs``, ``cud`` and ``cruds``.
  A v1 scope carries no query.

Other scopes (``openid``, ``fhirUser``, ``profile``, ``launch``, ``launch/patient``,
``offline_access``, ``online_access``…) are not resource scopes: ``parse_scope`` returns None for
them and ``ScopeSet`` keeps them in ``others``.

Interactions map to permissions as in the v2 table: create→c; read, vread, instance history→r;
update, patch→u; delete→d; type/system search and type/system history→s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

CONTEXTS = ("patient", "user", "system")
PERMS = "cruds"
V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}

# interaction kind (fhir_server.rest.interaction) -> SMART v2 permission letter
INTERACTION_PERM = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search-type": "s",
    "search-system": "s",
    "history-type": "s",
    "history-system": "s",
}

_SCOPE_RE = re.compile(
    r"(?P<ctx>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]{0,63})\.(?P<perm>[a-z*]+)(?:\?(?P<query>.*))?",
    re.S,
)
_V2_PERM_RE = re.compile(r"c?r?u?d?s?")


class ScopeError(ValueError):
    """A resource scope that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Scope:
    context: str  # patient | user | system
    type: str  # a resource type or "*"
    perms: frozenset[str]  # subset of c r u d s
    query: tuple[tuple[str, str], ...] = ()  # granular constraints (v2 only), ANDed
    version: int = 2

    def grants(self, perm: str, rtype: str | None) -> bool:
        return perm in self.perms and (self.type == "*" or rtype is None or self.type == rtype)

    def v2(self) -> str:
        """The canonical v2 spelling."""
        text = f"{self.context}/{self.type}.{''.join(p for p in PERMS if p in self.perms)}"
        if self.query:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.query)
        return text


def parse_scope(text: str) -> Scope | None:
    """A resource scope, or None for scopes that are not about resources; ScopeError if malformed."""
    if "/" not in text or text.split("/", 1)[0] not in CONTEXTS:
        return None
    m = _SCOPE_RE.fullmatch(text)
    if m is None:
        raise ScopeError(f"'{text[:80]}' is not a SMART resource scope")
    perm, query = m["perm"], m["query"]
    if perm in V1_PERMS:
        if query is not None:
            raise ScopeError(f"'{text[:80]}': v1 scopes take no query")
        return Scope(m["ctx"], m["type"], frozenset(V1_PERMS[perm]), (), 1)
    if not perm or not _V2_PERM_RE.fullmatch(perm):
        raise ScopeError(f"'{text[:80]}': permissions must be a non-empty, ordered subset of 'cruds'")
    pairs: tuple[tuple[str, str], ...] = ()
    if query is not None:
        pairs = tuple(parse_qsl(query, keep_blank_values=True))
        if not pairs or any(not k or not v for k, v in pairs):
            raise ScopeError(f"'{text[:80]}': the query must be param=value pairs")
    return Scope(m["ctx"], m["type"], frozenset(perm), pairs, 2)


def v1_to_v2(text: str) -> str:
    scope = parse_scope(text)
    return text if scope is None else scope.v2()


# --- a principal's scopes, precomputed per resource type -----------------------------------------

# How a set of scopes lets a principal see resources of one type for one permission:
#   ALL       — any resource of the type
#   rules     — a tuple of Rule: the resource must satisfy at least one
#   NONE      — nothing
ALL = "all"


@dataclass(frozen=True, slots=True)
class Rule:
    """One way to be allowed: in the patient's compartment (if `patient`), matching `query` (if any)."""

    patient: str | None
    query: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class ScopeSet:
    """Parsed scopes of one token, with the question "may it do P on type T, and under which rules".

    `patient` is the launch context patient (patient/ scopes grant nothing without one);
    `user_patient` is set when the user is a patient: user/ scopes then mean "what this user may
    see", i.e. their own compartment.
    """

    scopes: tuple[Scope, ...]
    others: frozenset[str]
    patient: str | None = None
    user_patient: str | None = None
    _cache: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | list[str] | frozenset[str] | tuple, patient: str | None = None,
              user_patient: str | None = None, strict: bool = False) -> ScopeSet:
        words = text.split() if isinstance(text, str) else list(text)
        scopes, others = [], set()
        for w in words:
            try:
                s = parse_scope(w)
            except ScopeError:
                if strict:
                    raise
                continue
            if s is None:
                others.add(w)
            else:
                scopes.append(s)
        return cls(tuple(scopes), frozenset(others), patient, user_patient)

    def _rule(self, scope: Scope) -> Rule | None:
        if scope.context == "patient":
            if self.patient is None:
                return None
            return Rule(self.patient, scope.query)
        if scope.context == "user" and self.user_patient is not None:
            return Rule(self.user_patient, scope.query)
        return Rule(None, scope.query)

    def access(self, perm: str, rtype: str | None):
        """ALL, a tuple of Rules, or () (nothing) for permission `perm` on `rtype` (None: any type)."""
        key = (perm, rtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        rules: list[Rule] = []
        unrestricted = False
        for s in self.scopes:
            if not s.grants(perm, rtype):
                continue
            rule = self._rule(s)
            if rule is None:
                continue
            if rule.patient is None and not rule.query:
                unrestricted = True
                break
            if rule not in rules:
                rules.append(rule)
        out = ALL if unrestricted else tuple(rules)
        self._cache[key] = out
        return out

    def permits(self, interaction: str, rtype: str | None) -> bool:
        perm = INTERACTION_PERM.get(interaction)
        return perm is not None and bool(self.access(perm, rtype))

    def has(self, scope: str) -> bool:
        return scope in self.others

    def resource_scopes(self) -> list[str]:
        return [s.v2() for s in self.scopes]
