"""Patient consent at the decision point: who may see and add to whose record (IHE PCF).

`ConsentPolicy` is a `Policy` (access/decision.py), so it is asked on every path to data that the
records layer serves — read, vread, history, search (its filter goes into the query and the count),
includes, chains, `_has`, conditional matching, every Bundle entry, operations, Binary — and never
by handlers. The rules are in access/consent_rules.py; this module decides who the caller is,
fetches what the rules need, and turns verdicts into database filters and per-resource answers.

Callers:
* a professional (a practitioner user; their identities are their Practitioner, their
  PractitionerRoles and those roles' Organizations) and a backend client acting for the
  Organization it is registered for: reach a record's data only as its Consents allow (read, add),
  or under break-glass for the patient their token declared it for; masked documents only when
  they authored them or are the patient's general practitioner;
* the patient (their own record, as their scopes already confine them): everything but what a
  professional marked hidden from them; they add documents of their own (patient-authored), change
  only those, and may (un)mask any document of their record;
* an administrator: the Patient and Consent resources (to administer records), no clinical data;
* an operator service (a backend client registered as such) and the insecure development
  principal: not bound by consent (they are audited by the audit hooks).

What a decision needs is read from the database once (one indexed query per patient touched,
batched; a cross-patient search reads the Consents naming the professional) and kept per worker in
a `ConsentCache`, valid while the consent epoch (access/epoch.py) has not moved: every change to a
Consent, a Patient or a PractitionerRole bumps it after the write is durable, and every interaction
reads it first, so a revocation or a block takes effect on the very next request, on every worker.
"""

from __future__ import annotations

import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.access.compartment import ABOUT_PARAMS, about_patients, patients_of
from fhir_server.access.consent_rules import OPEN, Record, Verdict, authorize, record_of
from fhir_server.access.decision import DESTROY_AFTER_GRACE, DESTROY_NEVER, DESTROY_NOW, Decision, Policy, deny
from fhir_server.auth.principal import Principal
from fhir_server.fhir import dmp
from fhir_server.fhir.interactions import Interaction
from fhir_server.search.mongo import NOTHING
from fhir_server.search.registry import REFERENCE, TOKEN, field_name

MASKED_TOKEN = f"{dmp.SECURITY_SYSTEM}|{dmp.MASKED}"
HIDDEN_TOKEN = f"{dmp.SECURITY_SYSTEM}|{dmp.HIDDEN_FROM_PATIENT}"
SECURITY_FIELD = field_name(TOKEN, "_security")
RECORD_TYPES = frozenset(ABOUT_PARAMS) | {"Patient"}  # types whose resources belong to a patient's record
# types whose visibility follows the DMP labels (a Provenance carries its target's: a masked
# document's Provenance would otherwise tell who wrote what, and when)
LABELLED_TYPES = ("DocumentReference", "Binary", "Provenance")
ADMIN_TYPES = ("Patient", "Consent")
MAX_PATIENTS = 20000  # records one professional's cross-patient search may reach

PROFESSIONAL, PATIENT, ADMIN = "professional", "patient", "admin"


def _about_field(rtype: str) -> str:
    return "_id" if rtype == "Patient" else field_name(REFERENCE, ABOUT_PARAMS[rtype][0])


def _refs(ids, rtype: str = "") -> list[str]:
    """How the about-field of `rtype` stores these patients (Patient: bare ids in `_id`)."""
    return sorted(ids) if rtype == "Patient" else [f"Patient/{p}" for p in sorted(ids)]


def _in(fieldname: str, values: list[str]) -> dict:
    if not values:
        return NOTHING
    return {fieldname: values[0]} if len(values) == 1 else {fieldname: {"$in": values}}


def _authors(doc: dict) -> set[str]:
    """Who wrote a document; for a Provenance, the agents of the write it describes."""
    if doc.get("resourceType") == "Provenance":
        return {ref for a in doc.get("agent") or () for ref in [dmp.ref_of(a.get("who") if isinstance(a, dict) else None)]
                if ref}
    return {ref for a in doc.get("author") or () for ref in [dmp.ref_of(a)] if ref}


class ConsentCache:
    """What one worker learnt of patients' consents, valid for one value of the consent epoch
    (and at most `max_age` seconds, a backstop for a bump lost in a crash)."""

    def __init__(self, epoch: Any, max_age: float = 60.0, max_patients: int = 200_000) -> None:
        self.source = epoch
        self.max_age = max_age
        self.max_patients = max_patients
        self.epoch: int | None = None
        self.since = 0.0
        self.records: dict[str, Record] = {}
        self.roles: dict[str, frozenset[str]] = {}  # Practitioner ref -> PractitionerRole and Organization refs
        self.named: dict[frozenset[str], frozenset[str]] = {}  # identities -> patients whose Consents name them

    async def sync(self) -> int:
        """The epoch for this interaction; what was cached under another is dropped."""
        epoch = await self.source.current()
        now = time.monotonic()
        if epoch != self.epoch or now - self.since > self.max_age or len(self.records) > self.max_patients:
            self.records, self.roles, self.named = {}, {}, {}
            self.epoch, self.since = epoch, now
        return epoch


@dataclass(slots=True)
class ConsentState:
    kind: str
    reader: Any  # the repository (storage/repository.py); access never imports it
    ids: set[str] = field(default_factory=set)
    roles_loaded: bool = False
    records: dict[str, Record] = field(default_factory=dict)
    reach: dict[str, frozenset[str]] | None = None  # action -> patients reachable (cross-patient)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    epoch: int | None = None  # the consent epoch read when the interaction began (None: nothing cached)
    gp_mine: set[str] | None = None  # patients whose general practitioner the caller is (cross-patient searches)
    authored_content: set[str] | None = None  # Binary ids attached to documents the caller wrote
    authored_for: set[str] = field(default_factory=set)  # the patients authored_content covers


class ConsentPolicy(Policy):
    def __init__(self, default: str = "deny-except-btg", epoch: Any = None) -> None:
        from fhir_server.access.epoch import NoEpoch

        self.default = default
        self.cache = ConsentCache(epoch if epoch is not None else NoEpoch())

    def _cacheable(self, state: ConsentState) -> bool:
        return state.epoch is not None and state.epoch == self.cache.epoch

    # --- who is asking ---------------------------------------------------------------------------

    async def prepare(self, principal: Principal, ix: Interaction, reader) -> ConsentState | None:
        if principal.kind == "client":
            if principal.operator:
                return None
            state = ConsentState(PROFESSIONAL, reader, {principal.organization} if principal.organization else set(),
                                 roles_loaded=True)
        elif principal.kind != "user":
            return None  # developer (unrestricted) never reaches here; anonymous is denied by scopes
        else:
            role = principal.role or ("patient" if principal.user_patient else "practitioner" if principal.fhir_user
                                      else "admin")
            kind = {"patient": PATIENT, "admin": ADMIN}.get(role, PROFESSIONAL)
            state = ConsentState(kind, reader, {principal.fhir_user} if kind == PROFESSIONAL and principal.fhir_user
                                 else set())
        state.epoch = await self.cache.sync()
        return state

    # --- what the decisions need -----------------------------------------------------------------

    async def load(self, principal: Principal, state: ConsentState, rtype: str, patients: AbstractSet[str] | None,
                   resource: dict | None = None) -> None:
        if rtype not in RECORD_TYPES or state.kind == ADMIN:
            return
        if patients is None:
            if state.kind == PROFESSIONAL:
                await self._load_reach(principal, state, rtype)
            return
        await self._load_records(state, patients)
        if state.kind == PROFESSIONAL:
            if not state.roles_loaded and any(a.split("/")[0] != "Practitioner" for p in patients
                                              for r in state.records[p].rules for a in r.actors):
                await self._load_roles(state)
            if resource is not None and dmp.MASKED in dmp.labels(resource):
                await self._load_gp(state, patients)
                if rtype == "Binary":
                    await self._load_authored_content(state, patients)
            elif resource is None and rtype in LABELLED_TYPES:
                await self._load_gp(state, patients)
                if rtype == "Binary":
                    await self._load_authored_content(state, patients)

    async def _load_authored_content(self, state: ConsentState, patients: AbstractSet[str] | None) -> None:
        """The Binaries attached to documents this professional wrote (of these patients, or of any):
        a masked document's content stays visible to its author, as the document does."""
        if state.authored_content is not None and patients is not None and patients <= state.authored_for:
            return
        if state.authored_content is None:
            state.authored_content = set()
        if not state.ids:
            return
        flt: dict = _in(field_name(REFERENCE, "author"), sorted(state.ids))
        if patients is not None:
            flt = {"$and": [flt, _in(field_name(REFERENCE, "subject"), _refs(patients))]}
            state.authored_for |= set(patients)
        for v, _ in await state.reader.find_docs("DocumentReference", flt, MAX_PATIENTS):
            doc = orjson.loads(v.json)
            for content in doc.get("content") or ():
                url = (content.get("attachment") or {}).get("url") if isinstance(content, dict) else None
                if isinstance(url, str) and url.startswith("Binary/") and url.count("/") == 1:
                    state.authored_content.add(url[len("Binary/"):])

    async def _load_records(self, state: ConsentState, patients: AbstractSet[str]) -> None:
        missing = [p for p in patients if p not in state.records]
        if not missing:
            return
        cacheable = self._cacheable(state)
        if cacheable:
            for p in missing:
                hit = self.cache.records.get(p)
                if hit is not None:
                    state.records[p] = hit
            missing = [p for p in missing if p not in state.records]
            if not missing:
                return
        by_patient: dict[str, list[dict]] = {p: [] for p in missing}
        rows = await state.reader.find_docs("Consent", _in(field_name(REFERENCE, "patient"), _refs(missing)),
                                            MAX_PATIENTS)
        for v, _ in rows:
            consent = orjson.loads(v.json)
            ref = dmp.ref_of(consent.get("patient")) or ""
            pid = ref[len("Patient/"):]
            if pid in by_patient:
                by_patient[pid].append(consent)
        for pid, consents in by_patient.items():
            state.records[pid] = record_of(pid, consents)
            if cacheable and self._cacheable(state):  # still the epoch the load began under
                self.cache.records[pid] = state.records[pid]

    async def _load_roles(self, state: ConsentState) -> None:
        state.roles_loaded = True
        practitioners = sorted(i for i in state.ids if i.startswith("Practitioner/"))
        if not practitioners:
            return
        key = practitioners[0] if len(practitioners) == 1 else None
        if key is not None and self._cacheable(state) and key in self.cache.roles:
            state.ids.update(self.cache.roles[key])
            return
        found: set[str] = set()
        rows = await state.reader.find_docs("PractitionerRole", _in(field_name(REFERENCE, "practitioner"),
                                                                    practitioners), 1000)
        for v, doc in rows:
            found.add(f"PractitionerRole/{v.id}")
            orgs = doc.get(field_name(REFERENCE, "organization")) or []
            found.update(o for o in ([orgs] if isinstance(orgs, str) else orgs) if o.startswith("Organization/"))
        state.ids.update(found)
        if key is not None and self._cacheable(state):
            self.cache.roles[key] = frozenset(found)

    async def _load_gp(self, state: ConsentState, patients: AbstractSet[str]) -> None:
        missing = [p for p in patients if p in state.records and state.records[p].gp is None]
        if not missing:
            return
        gp_field = field_name(REFERENCE, "general-practitioner")
        found = {v.id: doc.get(gp_field) for v, doc in await state.reader.find_docs(
            "Patient", _in("_id", sorted(missing)), len(missing))}
        for p in missing:
            gp = found.get(p) or []
            state.records[p].gp = frozenset([gp] if isinstance(gp, str) else gp)

    async def _load_gp_of_mine(self, state: ConsentState, patients: AbstractSet[str]) -> None:
        """Which of these patients have this professional as general practitioner: one indexed query
        on Patient.general-practitioner for their identities, not one read per patient."""
        if state.gp_mine is not None:
            return
        state.gp_mine = set()
        if state.ids:
            gp_field = field_name(REFERENCE, "general-practitioner")
            for v, _ in await state.reader.find_docs("Patient", _in(gp_field, sorted(state.ids)), MAX_PATIENTS):
                state.gp_mine.add(v.id)

    async def _load_reach(self, principal: Principal, state: ConsentState, rtype: str) -> None:
        """Every patient whose Consents name this professional (and the break-glass patient)."""
        if state.reach is None:
            if not state.roles_loaded:
                await self._load_roles(state)
            ids = sorted(state.ids)
            key = frozenset(ids)
            candidates: set[str] = set()
            if ids and self._cacheable(state) and key in self.cache.named:
                candidates = set(self.cache.named[key])
            elif ids:
                flt = {"$or": [_in(field_name(REFERENCE, "actor"), ids), _in(field_name(REFERENCE, "consentor"), ids)]}
                for _, doc in await state.reader.find_docs("Consent", flt, MAX_PATIENTS):
                    ref = doc.get(field_name(REFERENCE, "patient"))
                    if isinstance(ref, str) and ref.startswith("Patient/"):
                        candidates.add(ref[len("Patient/"):])
                if self._cacheable(state):
                    self.cache.named[key] = frozenset(candidates)
            if principal.break_glass:
                candidates.add(principal.patient)  # type: ignore[arg-type]
            await self._load_records(state, candidates)
            state.reach = {action: frozenset(p for p in candidates if self._verdict(principal, state, p, action).allowed)
                           for action in (dmp.READ, dmp.ADD)}
        if rtype in LABELLED_TYPES:
            await self._load_gp_of_mine(state, state.reach[dmp.READ])
        if rtype == "Binary":
            await self._load_authored_content(state, None)

    # --- decisions -------------------------------------------------------------------------------

    def _verdict(self, principal: Principal, state: ConsentState, patient: str, action: str) -> Verdict:
        return authorize(state.records[patient], state.ids, action, state.now,
                         break_glass=principal.break_glass and principal.patient == patient
                         and principal.role == "practitioner", default=self.default)

    def decide(self, principal: Principal, state: ConsentState, perm: str, rtype: str | None) -> Decision | None:
        if state.kind == ADMIN and rtype in RECORD_TYPES and rtype not in ADMIN_TYPES:
            return deny("administrators have no access to clinical data")
        return None

    def restricts(self, principal: Principal, state: ConsentState, perm: str, rtype: str) -> bool:
        if state.kind == PROFESSIONAL:
            return rtype in RECORD_TYPES
        if state.kind == PATIENT:
            return rtype in LABELLED_TYPES
        return False

    def _masked_visible(self, state: ConsentState, patients: AbstractSet[str]) -> set[str]:
        """Of these patients, those whose masked documents this professional sees (their GP)."""
        return {p for p in patients if (state.gp_mine is not None and p in state.gp_mine)
                or (state.records[p].gp or frozenset()) & state.ids}

    def db_filter(self, principal: Principal, state: ConsentState, perm: str, rtype: str,
                  within: AbstractSet[str] | None) -> dict | None:
        if state.kind == PATIENT:
            return {SECURITY_FIELD: {"$ne": HIDDEN_TOKEN}} if rtype in LABELLED_TYPES else None
        if state.kind != PROFESSIONAL or rtype not in RECORD_TYPES:
            return None
        if within is not None:
            allowed = {p for p in within if self._verdict(principal, state, p, dmp.READ).allowed}
            base = {} if allowed == set(within) else _in(_about_field(rtype), _refs(allowed, rtype))
        else:
            assert state.reach is not None
            allowed = set(state.reach[dmp.READ])
            base = _in(_about_field(rtype), _refs(allowed, rtype))
        if not allowed:
            return NOTHING
        if rtype not in LABELLED_TYPES:
            return base
        gp_of = self._masked_visible(state, allowed)
        if gp_of == allowed:
            return base
        visible = [{SECURITY_FIELD: {"$ne": MASKED_TOKEN}}]
        if rtype == "DocumentReference" and state.ids:
            visible.append(_in(field_name(REFERENCE, "author"), sorted(state.ids)))
        if rtype == "Provenance" and state.ids:
            visible.append(_in(field_name(REFERENCE, "agent"), sorted(state.ids)))
        if rtype == "Binary" and state.authored_content:
            visible.append(_in("_id", sorted(state.authored_content)))
        if gp_of:
            visible.append(_in(_about_field(rtype), _refs(gp_of, rtype)))
        masking = visible[0] if len(visible) == 1 else {"$or": visible}
        return masking if not base else {"$and": [base, masking]}

    def may_read(self, principal: Principal, state: ConsentState, rtype: str, resource: dict) -> bool | None:
        if state.kind == PATIENT:
            return dmp.HIDDEN_FROM_PATIENT not in dmp.labels(resource)
        if state.kind != PROFESSIONAL or rtype not in RECORD_TYPES:
            return None
        patients = about_patients(rtype, resource)
        if not patients:
            return False  # compartment data of no one's record: not a professional's to see
        if not all(self._verdict(principal, state, p, dmp.READ).allowed for p in patients):
            return False
        if dmp.MASKED in dmp.labels(resource):
            if rtype == "Binary" and state.authored_content and resource.get("id") in state.authored_content:
                return True
            return bool(_authors(resource) & state.ids) or self._masked_visible(state, patients) == patients
        return True

    def write_problem(self, principal: Principal, state: ConsentState, perm: str, rtype: str, before: dict | None,
                      after: dict | None) -> tuple[int, str] | str | None:
        if rtype not in RECORD_TYPES:
            return None
        if state.kind == PROFESSIONAL:
            return self._professional_write(principal, state, rtype, before, after)
        if state.kind == PATIENT:
            return self._patient_write(principal, state, rtype, before, after)
        if state.kind == ADMIN:
            if rtype != "Consent":
                return "administrators have no access to clinical data"
            if after is not None and dmp.origin_of(after) != "administrator":
                return f"a Consent an administrator records is tagged {dmp.ORIGIN_SYSTEM}|administrator"
        return None

    async def explain(self, principal: Principal, state: ConsentState | None, reader, patient: str, actor: str,
                      resource: dict | None, rtype: str | None, action: str) -> dict | None:
        """The patient's (or an administrator's) question: may `actor` do `action` on my record (or
        see `resource` of it), and why? Answered with the same rules that enforce every request."""
        if state is None:
            if not (principal.unrestricted or principal.operator):
                raise PermissionError("this caller may not ask")
        elif not (state.kind == ADMIN or state.kind == PATIENT and (principal.user_patient or principal.patient)
                  == patient):
            raise PermissionError("only the patient (about their own record) or an administrator may ask")
        kind = actor.split("/")[0]
        if kind == "Practitioner" and actor.count("/") == 1:
            who = Principal(kind="user", subject=actor, fhir_user=actor, role="practitioner")
        elif kind == "Organization" and actor.count("/") == 1:
            who = Principal(kind="client", subject=actor, organization=actor)
        else:
            raise ValueError("actor is a Practitioner/<id> or an Organization/<id>")
        st = await self.prepare(who, None, reader)  # type: ignore[arg-type]
        assert st is not None
        await self._load_records(st, {patient})
        if not st.roles_loaded:
            await self._load_roles(st)
        rec = st.records[patient]
        verdict = self._verdict(who, st, patient, action)
        out: dict[str, Any] = {"allowed": verdict.allowed, "reason": verdict.reason, "basis": list(verdict.basis),
               "record": rec.state, "identities": sorted(st.ids)}
        if resource is not None and rtype is not None:
            if patient not in about_patients(rtype, resource):
                raise ValueError("the resource is not of this patient's record")
            if verdict.allowed and action == dmp.READ and dmp.MASKED in dmp.labels(resource):
                await self._load_gp(st, {patient})
                if _authors(resource) & st.ids:
                    out["reason"] += "; the document is masked, but they wrote it"
                elif self._masked_visible(st, {patient}):
                    out["reason"] += "; the document is masked, but they are the patient's general practitioner"
                else:
                    out.update(allowed=False, basis=["label:masked"],
                               reason="the patient masked this document: only its author and the patient's general "
                                      "practitioner see it")
        return out

    def may_learn_existence(self, principal: Principal, state: ConsentState) -> bool | None:
        return state.kind == PROFESSIONAL

    def destruction(self, principal: Principal, state: ConsentState, patient: str) -> str | None:
        """The patient destroys their own closed record when they ask (the grace period is theirs to
        waive); an administrator acts on the patient's documented request once it has ended; a
        professional never (they pass the request on)."""
        if state.kind == PATIENT:
            return DESTROY_NOW if (principal.user_patient or principal.patient) == patient else DESTROY_NEVER
        if state.kind == ADMIN:
            return DESTROY_AFTER_GRACE
        return DESTROY_NEVER

    def _professional_write(self, principal: Principal, state: ConsentState, rtype: str, before: dict | None,
                            after: dict | None) -> str | None:
        doc = after if after is not None else before
        assert doc is not None
        patients = about_patients(rtype, doc) | (about_patients(rtype, before) if before is not None else set())
        if rtype == "Patient" and before is None:
            return None  # registering a patient's identity: their record does not exist yet
        if not patients:
            return f"a professional writes {rtype} resources of a patient's record only"
        if rtype == "Consent":
            return self._professional_consent(principal, state, before, after)
        for p in patients:
            verdict = self._verdict(principal, state, p, dmp.ADD)
            if not verdict.allowed:
                return f"not authorized to add to this patient's record: {verdict.reason}"
        others = patients_of(rtype, doc) - patients
        if others:  # e.g. another patient as a document's author: it would land in their compartment too
            return "a resource of one patient's record may not name other patients (their compartment would " \
                   "receive it)"
        if before is not None and rtype == "DocumentReference" and dmp.is_patient_authored(before):
            return "documents of the patient's personal space are changed by the patient only"
        if before is not None and after is not None and (
                (dmp.MASKED in dmp.labels(before)) != (dmp.MASKED in dmp.labels(after))):
            return "only the patient masks or unmasks a document"
        if before is None and after is not None and dmp.MASKED in dmp.labels(after):
            return "only the patient masks a document"
        return None

    def _professional_consent(self, principal: Principal, state: ConsentState, before: dict | None,
                              after: dict | None) -> str | None:
        if before is not None or after is None:
            return "only the patient changes or revokes an authorization"
        patient = next(iter(about_patients("Consent", after)))
        rec = state.records[patient]
        blocked = authorize(rec, state.ids, dmp.READ, state.now, break_glass=False, default=self.default)
        if rec.state == OPEN and not blocked.allowed and "blocked" in blocked.reason:
            return "the patient has blocked this professional"
        policy = dmp.policy_of(after)
        if policy == dmp.RECORD_POLICY:
            performers = {dmp.ref_of(p) for p in after.get("performer") or ()}
            if not performers <= state.ids | {f"Patient/{patient}"} or not performers & state.ids:
                return "a professional records the patient's agreement to create the record in their own name " \
                       "(performer)"
            return None
        if policy != dmp.AUTHORIZATION_POLICY or (after.get("provision") or {}).get("type") != "permit":
            return "a professional records only the authorization the patient gave them (a permit)"
        if rec.state != OPEN:
            return "the patient's record is not open"
        actors = {dmp.ref_of(a.get("reference")) for a in after["provision"].get("actor") or ()}
        if not actors <= state.ids:
            return "a professional records an authorization for themselves or their organization only"
        if dmp.origin_of(after) != "professional":
            return f"an authorization recorded by a professional is tagged {dmp.ORIGIN_SYSTEM}|professional"
        return None

    def _patient_write(self, principal: Principal, state: ConsentState, rtype: str, before: dict | None,
                       after: dict | None) -> str | None:
        me = principal.user_patient or principal.patient
        if me is None:
            return None
        rec = state.records.get(me)
        if rtype == "Consent":
            if after is not None and dmp.origin_of(after) not in (None, "patient") and (
                    before is None or dmp.origin_of(before) != dmp.origin_of(after)):
                return f"a Consent the patient records is not tagged as recorded by someone else ({dmp.ORIGIN_SYSTEM})"
            return None
        if rtype == "Patient":
            return None
        if rec is None or rec.state != OPEN:
            return "the patient's record is not open" if rec is None or rec.state == "closed" else \
                "the patient has no shared record yet (record-creation consent)"
        if before is not None and after is not None and (
                (dmp.HIDDEN_FROM_PATIENT in dmp.labels(before)) != (dmp.HIDDEN_FROM_PATIENT in dmp.labels(after))):
            return "only a professional lifts the hidden-from-patient mark"
        if rtype == "DocumentReference":
            mine = f"Patient/{me}"
            if before is None:
                if after is not None and (mine not in _authors(after) or not dmp.is_patient_authored(after)):
                    return (f"a patient adds documents of their own: author {mine} and category "
                            f"{dmp.CATEGORY_SYSTEM}|{dmp.PATIENT_AUTHORED}")
                return None
            if mine in _authors(before) and dmp.is_patient_authored(before):
                return None
            if after is None:
                return "a patient deletes only documents of their own"
            if _without_mask(before) != _without_mask(after):
                return "a patient changes only documents of their own (they may mask or unmask any document)"
            return None
        if rtype == "Binary" and before is not None:
            if after is None or _without_mask(before) != _without_mask(after):
                return "a patient may only mask or unmask the content of a document"
        return None


def _without_mask(resource: dict) -> dict:
    """The resource without version metadata and without the masked label (what a patient may change)."""
    out = dict(resource)
    meta = dict(out.get("meta") or {})
    for k in ("versionId", "lastUpdated"):
        meta.pop(k, None)
    security = [c for c in meta.get("security") or ()
                if not (isinstance(c, dict) and (c.get("system"), c.get("code")) == (dmp.SECURITY_SYSTEM, dmp.MASKED))]
    if security:
        meta["security"] = security
    else:
        meta.pop("security", None)
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out

