"""What a patient's Consents say, and the authorization decision they lead to (pure).

The record's vocabulary is in fhir/dmp.py. A patient's record is *open* when one of their
record-creation Consents is active, *closed* when they have some and none is active, and *none*
before the first. The decision for a professional (their identities: Practitioner, their
PractitionerRoles and Organizations; a backend client's Organization) and an action (read, add),
after IHE PCF's explicit option with this record's precedence:

1. the record must be open;
2. a deny naming the professional (a *block*) refuses, whatever was permitted, even later;
3. a permit naming the professional (an authorization, or the record-creation Consent they
   recorded) allows what its actions cover, within its period;
4. break-glass (the token declared purpose BTG for this patient) allows reading, unless the patient
   refused emergency access (a deny with purpose BTG and no actor) or the site's default is `deny`;
5. otherwise the site's default policy (IHE PCF implicit option): `deny-except-btg` or `deny`.

Each verdict names its basis (the Consents, or the default policy), which `$explain-access`
returns to the patient.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime

from fhir_server.fhir import dmp
from fhir_server.search.normalize import MAX_INSTANT, MIN_INSTANT, period_range

OPEN, CLOSED, NONE = "open", "closed", "none"
DEFAULT_POLICIES = ("deny-except-btg", "deny")


@dataclass(frozen=True, slots=True)
class Rule:
    permit: bool
    actors: frozenset[str]  # "Practitioner/x", …; empty: everyone
    actions: frozenset[str]  # dmp.READ / dmp.ADD; empty: every action
    purposes: frozenset[str]  # v3-ActReason codes; empty: any purpose
    lo: datetime = MIN_INSTANT
    hi: datetime = MAX_INSTANT
    source: str = ""  # "Consent/<id>"

    def active(self, now: datetime) -> bool:
        return self.lo <= now < self.hi

    def covers(self, action: str) -> bool:
        return not self.actions or action in self.actions

    @property
    def emergency_only(self) -> bool:
        """A deny that only concerns break-glass (purpose BTG)."""
        return bool(self.purposes) and self.purposes <= {dmp.BTG}


@dataclass(slots=True)
class Record:
    """One patient's record as consent sees it."""

    patient: str
    state: str = NONE
    rules: list[Rule] = field(default_factory=list)
    record_consents: list[str] = field(default_factory=list)
    gp: frozenset[str] | None = None  # Patient.generalPractitioner (loaded when a decision needs it)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    basis: tuple[str, ...] = ()
    break_glass: bool = False


def _codes(concepts) -> frozenset[str]:
    out = set()
    for concept in concepts or ():
        if isinstance(concept, dict):
            if isinstance(concept.get("code"), str):  # a Coding (provision.purpose)
                out.add(concept["code"])
            for c in concept.get("coding") or ():  # a CodeableConcept (provision.action)
                if isinstance(c, dict) and isinstance(c.get("code"), str):
                    out.add(dmp.ACTION_CODES.get(c["code"], c["code"]))
    return frozenset(out)


def _period(provision: dict) -> tuple[datetime, datetime]:
    period = provision.get("period")
    if not isinstance(period, dict):
        return MIN_INSTANT, MAX_INSTANT
    try:
        return period_range(period.get("start"), period.get("end"))
    except ValueError:
        return MIN_INSTANT, MIN_INSTANT  # unreadable: never in force (validation refuses it anyway)


def record_of(patient: str, consents: Iterable[dict]) -> Record:
    """The record of Patient/`patient` from its Consents (any status)."""
    rec = Record(patient)
    seen_record = False
    for c in consents:
        policy = dmp.policy_of(c)
        active = c.get("status") == "active"
        source = f"Consent/{c.get('id')}"
        if policy == dmp.RECORD_POLICY:
            seen_record = True
            if active:
                rec.state = OPEN
                rec.record_consents.append(source)
                recorders = frozenset(ref for p in c.get("performer") or () for ref in [dmp.ref_of(p)]
                                      if ref and ref.startswith("Practitioner/"))
                if recorders:  # the professional who recorded the patient's agreement is authorized by it
                    rec.rules.append(Rule(True, recorders, frozenset(), frozenset(), source=source))
        elif policy == dmp.AUTHORIZATION_POLICY and active:
            provision = c.get("provision")
            if not isinstance(provision, dict) or provision.get("type") not in ("permit", "deny"):
                continue
            actors = frozenset(ref for a in provision.get("actor") or () if isinstance(a, dict)
                               for ref in [dmp.ref_of(a.get("reference"))] if ref)
            lo, hi = _period(provision)
            rec.rules.append(Rule(provision["type"] == "permit", actors, _codes(provision.get("action")),
                                  _codes(provision.get("purpose")), lo, hi, source))
    if seen_record and rec.state != OPEN:
        rec.state = CLOSED
    return rec


def authorize(rec: Record, ids: AbstractSet[str], action: str, now: datetime, *, break_glass: bool,
              default: str = "deny-except-btg") -> Verdict:
    """May a professional with identities `ids` perform `action` on this record now?"""
    if rec.state == NONE:
        return Verdict(False, "the patient has no shared record (no record-creation consent)")
    if rec.state == CLOSED:
        return Verdict(False, "the patient's record is closed")
    rules = [r for r in rec.rules if r.active(now) and r.covers(action)]
    blocks = [r for r in rules if not r.permit and r.actors & ids and (break_glass or not r.emergency_only)]
    if blocks:
        return Verdict(False, "the patient has blocked this professional", tuple(r.source for r in blocks))
    permits = [r for r in rules if r.permit and r.actors & ids]
    if permits:
        return Verdict(True, "authorized by the patient", tuple(r.source for r in permits))
    if break_glass:
        refusals = [r for r in rules if not r.permit and not r.actors and dmp.BTG in r.purposes]
        if refusals:
            return Verdict(False, "the patient refused emergency access", tuple(r.source for r in refusals))
        if default == "deny":
            return Verdict(False, "emergency access is disabled by the site's policy", ("policy:deny",))
        if action == dmp.READ:
            return Verdict(True, "emergency access (break-glass)", ("purpose:BTG",), break_glass=True)
    return Verdict(False, "the patient has not authorized this professional", (f"policy:{default}",))
