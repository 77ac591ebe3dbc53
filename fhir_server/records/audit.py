"""Every FHIR interaction traced as IHE BALP AuditEvents, durable before the response.

A `Hook` (records/hooks.py), plugged in by composition.build, never called by handlers. It hears
each interaction `started` (a stack per request: Bundle entries and conditional re-runs nest
under the request that carries them), collects what `Records` reported as disclosed and
written, and at `finished` turns the interaction into AuditEvents after BALP
(https://profiles.ihe.net/ITI/BALP/): type `rest`, subtype the restful-interaction code, action
C/R/U/D/E, outcome 0/4/8/12 with the OperationOutcome's text, the user, client and server agents,
and entities for the patient, each disclosed or written version, the query and the request id.
One AuditEvent per patient whose data the interaction disclosed or wrote (BALP's
PatientRead/PatientQuery carry one patient each), or one without a patient. Bundle entries refused
alike (same interaction on the same type, same refusal, same patients) are one attempt: they fold
into one event that names every resource they asked for and says how many entries it stands for, so
a hostile 1000-entry batch costs the trail a few events instead of a thousand.

When the outermost interaction of a request finishes, all of the request's events go to the
`AuditTrail` (records/trail.py) and the hook waits until they are stored; if they cannot be, it
raises a 503 FhirError, which replaces the response: nothing is disclosed unaudited (fail
closed). The published definitions (capabilities, profiles) hold no personal data and are not
audited.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from fhir_server.access.compartment import about_patients
from fhir_server.auth.principal import Principal
from fhir_server.fhir import dmp, offload
from fhir_server.fhir import interactions as k
from fhir_server.fhir.outcome import FhirError
from fhir_server.records.hooks import Event, Hook
from fhir_server.records.trail import AuditTrail
from fhir_server.storage.documents import Version, fhir_instant, now_ms

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
              "display": "Restful Operation"}
INTERACTION = "http://hl7.org/fhir/restful-interaction"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ROLE_SYSTEM = "urn:fhir-dmp:role"
CLIENT_SYSTEM = "urn:fhir-dmp:client-id"
USER_SYSTEM = "urn:fhir-dmp:user"

# BALP: Create C, Read/vread R, Update/patch U, Delete D; Query (search, history) and operations E
ACTION = {k.CREATE: "C", k.READ: "R", k.VREAD: "R", k.UPDATE: "U", k.PATCH: "U", k.DELETE: "D"}
SUBTYPE = {k.READ: "read", k.VREAD: "vread", k.UPDATE: "update", k.PATCH: "patch", k.DELETE: "delete",
           k.CREATE: "create", k.SEARCH_TYPE: "search-type", k.SEARCH_SYSTEM: "search-system",
           k.HISTORY_INSTANCE: "history-instance", k.HISTORY_TYPE: "history-type",
           k.HISTORY_SYSTEM: "history-system", k.OPERATION: "operation"}
QUERIES = frozenset({k.SEARCH_TYPE, k.SEARCH_SYSTEM, k.HISTORY_INSTANCE, k.HISTORY_TYPE, k.HISTORY_SYSTEM})
NOT_AUDITED = k.PUBLIC  # the server's own published definitions: no personal data


@dataclass(slots=True)
class _Seen:
    """What one interaction touched."""

    event: Event
    written: list[Version] = field(default_factory=list)
    concerned: set[str] = field(default_factory=set)  # patients of what was refused
    refs: list[tuple[str | None, str]] = field(default_factory=list)  # (patient, Type/id/_history/v)


@dataclass(slots=True)
class _Request:
    stack: list[_Seen] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    # refused Bundle entries, grouped by what their events would say (see _fold_key)
    folded: dict[tuple, tuple[int, FhirError | None, list[_Seen]]] = field(default_factory=dict)


def outcome_code(status: int) -> str:
    """R4 audit-event-outcome: 0 success, 4 minor failure (the caller's), 8 serious (the server's,
    e.g. unavailable), 12 major (an internal error)."""
    if status < 400:
        return "0"
    if status < 500:
        return "4"
    return "12" if status == 500 else "8"


def _coding(system: str, code: str, display: str | None = None) -> dict:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _purposes(p: Principal) -> list[dict]:
    out = []
    for code in p.purpose_of_use:
        concept: dict = {"coding": [_coding(ACT_REASON, code)]}
        if code == "BTG" and p.btg_reason:
            concept["text"] = p.btg_reason
        out.append(concept)
    return out


def agents(p: Principal, base_url: str | None = None) -> list[dict]:
    """The user (requestor, with role and purpose of use), the client application (BALP Source Role
    ID; the requestor when no user is involved) and this server (Destination Role ID). Never a token."""
    out = []
    purposes = _purposes(p)
    if p.kind in ("user", "developer"):
        who = {"reference": p.fhir_user} if p.fhir_user else {"identifier": {"system": USER_SYSTEM,
                                                                             "value": str(p.subject)}}
        user: dict = {"type": {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]},
                      "who": who, "requestor": True}
        if p.role:
            user["role"] = [{"coding": [_coding(ROLE_SYSTEM, p.role)]}]
        if purposes:
            user["purposeOfUse"] = purposes
        out.append(user)
    if p.client_id or p.kind == "client":
        client: dict = {"type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
                        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": str(p.client_id or p.subject)}},
                        "requestor": p.kind == "client"}
        if p.kind == "client" and p.organization:
            client["who"]["display"] = p.organization
        if p.kind == "client" and purposes:
            client["purposeOfUse"] = purposes
        out.append(client)
    if not out:  # anonymous: still someone asked
        out.append({"who": {"display": "anonymous"}, "requestor": True})
    server: dict = {"type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
                    "who": {"display": "fhir-server"}, "requestor": False}
    if base_url:
        server["network"] = {"address": base_url, "type": "5"}
    out.append(server)
    return out


def _patients_of(v: Version) -> set[str]:
    if v.json is None:
        return set()
    try:
        return about_patients(v.type, orjson.loads(v.json))
    except Exception:
        return set()


PATIENT_PARAMS = ("patient", "subject", "beneficiary")
MAX_ENTITIES = 500  # resources named in one AuditEvent (a larger disclosure is split over several)
BODY_LOOKED_AT = 1 << 20  # a failed write's body larger than this is not parsed again to name its record
# Bytes of a query kept in its AuditEvent: a request line may carry ~80 KB (httptools' header limit)
# and a _search form 64 KiB, which a client could otherwise have the trail store, forever, per
# request; real searches stay far below. A longer query keeps its start, length and SHA-256.
MAX_QUERY_BYTES = 8192


def _asked_patients(event: Event) -> set[str | None]:
    """The patients an interaction is about when nothing was disclosed (a refusal, a failure, a
    search that found nothing): the record asked for by id, compartment or search parameter
    (BALP PatientQuery names the patient searched for), else the patient the caller is."""
    ix = event.interaction
    if ix.compartment:
        return {ix.compartment}
    if ix.type == "Patient" and ix.id:
        return {ix.id}
    asked: set[str | None] = set()
    if ix.type and ix.kind in (k.CREATE, k.UPDATE):  # a write refused or invalid: the record it names
        try:
            body = ix.resource if ix.resource is not None else (
                orjson.loads(ix.body) if ix.body and len(ix.body) <= BODY_LOOKED_AT else None)
            if isinstance(body, dict):
                asked.update(about_patients(ix.type, body))
        except Exception:  # a body too broken to say
            pass
    for name, value in ix.params or ():
        base, _, modifier = name.partition(":")
        bare_ids = base == "patient" or modifier == "Patient" or (ix.type == "Patient" and base == "_id")
        if not (bare_ids or base in PATIENT_PARAMS):
            continue
        for v in value.split(","):
            v = v.strip()
            if v.startswith("Patient/"):
                v = v[8:]
            elif not bare_ids:
                continue  # subject=Group/1 or a bare id of any type: not a patient's record
            if v and "/" not in v:
                asked.add(v)
    return asked or {event.principal.patient}


def _outcome_text(status: int, error: FhirError | None) -> str:
    text = "; ".join(i.diagnostics for i in error.issues if i.diagnostics) if error else ""
    return text or f"HTTP {status}"


def _fold_key(seen: _Seen, status: int, error: FhirError | None) -> tuple | None:
    """What a refused Bundle entry's events would say, save the resource it names; None when the
    entry must have events of its own (it succeeded, disclosed or wrote something, or is a query
    or an operation, whose query entity is its own)."""
    ev = seen.event
    ix = ev.interaction
    if status < 400 or seen.written or seen.refs or ix.kind not in ACTION:
        return None
    patients = frozenset(seen.concerned) if seen.concerned else frozenset(_asked_patients(ev))
    return ix.kind, ix.type, status, _outcome_text(status, error), bool(seen.concerned), patients


def build_events(seen: _Seen, status: int, error: FhirError | None, source: str,
                 alike: Sequence[_Seen] = ()) -> list[dict]:
    """The AuditEvents of one finished interaction (one per patient concerned, or one). `alike`:
    further Bundle entries refused the same way (_fold_key), named in the same events."""
    ev = seen.event
    ix = ev.interaction
    recorded = fhir_instant(now_ms())
    by_patient: dict[str | None, list[str]] = {}
    for v in seen.written:
        pids: set[str | None] = set(_patients_of(v)) or {None}
        for pid in pids:
            by_patient.setdefault(pid, []).append(f"{v.type}/{v.id}/_history/{v.version}")
    for pid, ref in seen.refs:
        by_patient.setdefault(pid, []).append(ref)
    hidden_from_agent = False
    if not by_patient and seen.concerned:
        # an attempt on a record the caller may not see: the patient is told (their access history),
        # the caller must not learn whose it was from their own AuditEvents (access/audit_readers.py)
        for pid in sorted(seen.concerned):
            by_patient[pid] = []
        hidden_from_agent = True
    if not by_patient:
        for pid in _asked_patients(ev):
            by_patient[pid] = []
    elif None in by_patient and len(by_patient) > 1:  # resources of no one go with every patient's event
        shared = by_patient.pop(None)
        for vs in by_patient.values():
            vs.extend(shared)
    subtype = SUBTYPE.get(ix.kind, "operation")
    if ix.kind == k.BUNDLE:
        subtype = "batch" if _bundle_type(ix) == "batch" else "transaction"
    base: dict = {
        "resourceType": "AuditEvent",
        "type": EVENT_TYPE,
        "subtype": [_coding(INTERACTION, subtype)],
        "action": ACTION.get(ix.kind, "E"),
        "recorded": recorded,
        "outcome": outcome_code(status),
        "agent": agents(ev.principal),
        "source": {"site": "fhir-server", "observer": {"display": "fhir-server"},
                   "type": [_coding(SOURCE_TYPE, "4", "Application Server")]},
    }
    if status >= 400:
        text = _outcome_text(status, error)
        if alike:
            text = f"{len(alike) + 1} Bundle entries refused alike: {text}"
        base["outcomeDesc"] = text[:1000]
    purposes = _purposes(ev.principal)
    if purposes:
        base["purposeOfEvent"] = purposes
    if hidden_from_agent:
        base["meta"] = {"security": [{"system": dmp.SECURITY_SYSTEM, "code": dmp.HIDDEN_FROM_AGENT}]}
    common: list[dict] = []
    if ix.kind in QUERIES or (ix.kind == k.OPERATION and ix.params):
        query = "&".join(f"{a}={b}" for a, b in ix.params).encode()
        description = f"{ix.method} {ix.path_for_links() or ''}".strip()
        if len(query) > MAX_QUERY_BYTES:
            description += (f" (query of {len(query)} bytes, SHA-256 {hashlib.sha256(query).hexdigest()}: "
                            f"its first {MAX_QUERY_BYTES} bytes are kept)")
        common.append({"type": _coding(ENTITY_TYPE, "2", "System Object"), "role": _coding(OBJECT_ROLE, "24", "Query"),
                       "query": base64.b64encode(query[:MAX_QUERY_BYTES]).decode(), "description": description})
    if ix.kind == k.OPERATION and ix.operation:
        common.append({"type": _coding(ENTITY_TYPE, "2", "System Object"), "name": f"${ix.operation}",
                       **({"what": {"reference": f"{ix.type}/{ix.id}"}} if ix.type and ix.id else {})})
    if ev.request_id:
        common.append({"type": _coding(BALP_ENTITY, "XrequestId", "X-Request-Id"),
                       "what": {"identifier": {"value": ev.request_id}}})
    out = []
    for pid, versions in by_patient.items():
        entities = []
        if pid is not None:
            entities.append({"what": {"reference": f"Patient/{pid}"}, "type": _coding(ENTITY_TYPE, "1", "Person"),
                             "role": _coding(OBJECT_ROLE, "1", "Patient")})
        done = set()
        for ref in versions:
            if ref in done:
                continue
            done.add(ref)
            entities.append({"what": {"reference": ref}, "type": _coding(ENTITY_TYPE, "2", "System Object"),
                             "role": _coding(OBJECT_ROLE, "4", "Domain Resource")})
        for one in (seen, *alike) if not versions else ():  # what was asked for, nothing disclosed
            target = one.event.interaction
            if target.kind == k.CREATE and target.type:  # no id yet: the type it would have created
                what, key = {"type": target.type}, target.type
            elif target.type and target.id and not (target.type == "Patient" and target.id == pid):
                what = {"reference": f"{target.type}/{target.id}"}
                key = what["reference"]
            else:
                continue
            if key not in done:
                done.add(key)
                entities.append({"what": what, "type": _coding(ENTITY_TYPE, "2", "System Object"),
                                 "role": _coding(OBJECT_ROLE, "4", "Domain Resource")})
        # a patient's event names at most MAX_ENTITIES resources; more (a copy or an export of a large
        # record) are named in further events of the same request, so none is left out and no
        # AuditEvent approaches the engine's 16 MB document limit
        head, rest = entities[:1] if pid is not None else [], entities[1:] if pid is not None else entities
        for start in range(0, max(len(rest), 1), MAX_ENTITIES):
            out.append({**base, "id": str(uuid.uuid4()), "entity": head + rest[start:start + MAX_ENTITIES] + common})
    return out


def _bundle_type(ix) -> str | None:
    """Set once the handler read the Bundle; a body refused before that is parsed here only when
    small (a large one would be parsed on the event loop)."""
    if ix.bundle_type is not None or len(ix.body or b"") >= offload.INLINE_BYTES:
        return ix.bundle_type
    try:
        return (ix.resource or orjson.loads(ix.body or b"{}")).get("type")
    except Exception:
        return None


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("audit_request", default=None)


class AuditHook(Hook):
    """Collects each request's interactions and stores their AuditEvents before it answers. The
    request's state lives in a context variable (each HTTP request runs in its own task), not under
    the X-Request-Id, which a client chooses."""

    def __init__(self, trail: AuditTrail, source: str = "fhir-server") -> None:
        self.trail = trail
        self.source = source

    async def started(self, event: Event) -> None:
        if event.interaction.kind in NOT_AUDITED:
            return
        req = _REQUEST.get()
        if req is None or not req.stack:
            req = _Request()
            _REQUEST.set(req)
        req.stack.append(_Seen(event))

    def _current(self, event: Event) -> _Seen | None:
        req = _REQUEST.get()
        if req is None or not req.stack:
            return None
        for seen in reversed(req.stack):
            if seen.event is event:
                return seen
        return req.stack[-1]  # a conditional interaction re-run on the matched id: the same interaction

    async def disclosed(self, event: Event, versions: Sequence[Version]) -> None:
        """Kept as (patient, versioned reference) pairs, not versions: a long operation ($copy,
        $everything of a large record) must not hold every resource it sent until it ends."""
        seen = self._current(event)
        if seen is not None:
            for v in versions:
                ref = f"{v.type}/{v.id}/_history/{v.version}"
                patients: set[str | None] = set(_patients_of(v)) or {None}
                seen.refs.extend((pid, ref) for pid in patients)

    async def disclosed_refs(self, event: Event, refs: Sequence[tuple[str | None, str]]) -> None:
        seen = self._current(event)
        if seen is not None:
            seen.refs.extend(refs)

    async def written(self, event: Event, before: Version | None, after: Version | None) -> None:
        seen = self._current(event)
        if seen is not None and after is not None:
            seen.written.append(after)

    async def concerned(self, event: Event, patients) -> None:
        seen = self._current(event)
        if seen is not None:
            seen.concerned.update(patients)

    async def finished(self, event: Event, status: int, error: FhirError | None) -> None:
        if event.interaction.kind in NOT_AUDITED:
            return
        req = _REQUEST.get()
        if req is None or not req.stack:
            return
        seen = req.stack.pop()
        in_bundle = bool(req.stack) and req.stack[-1].event.interaction.kind == k.BUNDLE
        key = _fold_key(seen, status, error) if in_bundle else None
        if key is not None:
            req.folded.setdefault(key, (status, error, []))[2].append(seen)
        else:
            req.events.extend(build_events(seen, status, error, self.source))
        if req.stack:
            return  # an entry of a Bundle: stored with the Bundle's own event
        for status_, error_, group in req.folded.values():
            req.events.extend(build_events(group[0], status_, error_, self.source, group[1:]))
        _REQUEST.set(None)
        try:
            await self.trail.store(req.events)
        except Exception as exc:
            raise FhirError(503, "transient", "the audit trail cannot be written; nothing was disclosed. Try again "
                                              "later", headers={"Retry-After": "1"}) from exc
