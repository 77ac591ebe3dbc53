"""`Records`: one interaction's handle on stored data, with access control on every call.

Handlers (fhir_server/rest/handlers/) hold a `Records` and nothing else that reaches data. Each
method asks the interaction's `Access` (access/decision.py) for its own permission, puts the
access filter into the database query and count, checks each resource it is about to return or
store (a second line of defence, on the resource *as stored*), and reports to the hooks what it
disclosed and wrote. Storage errors and permissions become FhirErrors with the statuses of
https://hl7.org/fhir/R4/http.html; a caller who may not see a resource learns nothing of it (404,
whether it exists, was deleted, or had another version).
"""

from __future__ import annotations

import contextlib
import heapq
import uuid
from collections.abc import AsyncIterator, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime

import orjson

from fhir_server.access.compartment import ABOUT_PARAMS, about_patients, in_compartment_types
from fhir_server.access.decision import DESTROY_NEVER, DESTROY_NOW, Access, Effect, principal_key
from fhir_server.fhir import dmp
from fhir_server.fhir.outcome import FhirError, gone, not_found
from fhir_server.fhir.profiles import Profiles
from fhir_server.records import access_history, export, search, trail
from fhir_server.records.access_history import AccessHistoryPage
from fhir_server.records.destruction import Destroyer, requester
from fhir_server.records.hooks import Event, Hooks
from fhir_server.records.provenance import ProvenanceOf, ProvenanceRecorder
from fhir_server.records.search import SearchPage
from fhir_server.search.registry import REFERENCE, field_name
from fhir_server.storage.documents import Version, history_id, now_ms
from fhir_server.storage.repository import MAX_WRITE_ATTEMPTS, Repository, Unit


def forbidden(reason: str) -> FhirError:
    return FhirError(403, "forbidden", reason)


def _denied(perm: str, rtype: str | None, reason: str) -> FhirError:
    what = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}[perm]
    return forbidden(reason or f"the token's scopes do not permit {what} on {rtype or 'the system'}")


@dataclass(slots=True)
class HistoryPage:
    versions: list[Version]
    has_more: bool
    total: int | None = None  # instance history: the number of versions


class Records:
    """The data handle of one interaction. Cheap to build: one per interaction, Bundle entries included."""

    __slots__ = ("repo", "access", "hooks", "event", "unit_", "base_url", "profiles_", "destroyer", "recorder", "trail")

    def __init__(self, repo: Repository, access: Access, hooks: Hooks, event: Event, unit: Unit | None,
                 base_url: str, profiles: Profiles | None = None, destroyer: Destroyer | None = None,
                 recorder: ProvenanceRecorder | None = None, audit_trail: trail.AuditTrail | None = None) -> None:
        self.destroyer = destroyer  # records/destruction.py (None: destruction not offered)
        self.trail = audit_trail  # where AuditEvents received from other systems are appended
        self.repo = repo
        self.access = access
        self.hooks = hooks
        self.event = event
        self.unit_ = unit
        self.base_url = base_url
        self.profiles_ = profiles or Profiles(())
        self.recorder = recorder or ProvenanceRecorder()


    @property
    def types(self) -> tuple[str, ...]:
        return self.repo.types

    @property
    def compartment_types(self) -> tuple[str, ...]:
        """The types of a patient's compartment, Patient first then by name (a stable paging order)."""
        return ("Patient",) + tuple(sorted(t for t in in_compartment_types() if t != "Patient"
                                           and t in self.repo.types))

    @property
    def in_unit(self) -> bool:
        return self.unit_ is not None and (self.unit_.session is not None or self.unit_.tx is not None)

    # --- permissions -----------------------------------------------------------------------------

    def require(self, perm: str, rtype: str | None) -> None:
        """403 unless `perm` on `rtype` may be used at all (for operations that only check)."""
        decision = self.access.decide(perm, rtype)
        if decision.effect is Effect.DENY:
            raise _denied(perm, rtype, decision.reason)

    async def _sees(self, perm: str, v: Version | None) -> bool:
        return v is not None and v.json is not None and await self.access.may_read(perm, v.type, v.json)

    async def _last_content(self, rtype: str, rid: str) -> tuple[Version | None, Version | None]:
        """(current version, or the last one with content before a deletion; the newest history entry)."""
        v = await self.repo.read(rtype, rid, unit=self.unit_)
        if v is not None:
            return v, v
        latest = await self.repo.latest(rtype, rid, unit=self.unit_)
        if latest is None or latest.version <= 1:
            return None, latest
        return await self.repo.vread(rtype, rid, latest.version - 1, unit=self.unit_), latest

    def _fast(self, perm: str, rtype: str) -> bool:
        """No per-resource question can fail: skip reading what only a check would need."""
        return self.access.decide(perm, rtype).effect is Effect.PERMIT

    async def _disclose(self, versions: list[Version]) -> list[Version]:
        await self.hooks.disclosed(self.event, versions)
        return versions

    async def _refuse(self, rtype: str, *resources: bytes | dict | None) -> None:
        """Tell the hooks whose records a refused interaction was about (the patient's access
        history shows the attempt; the caller learns nothing from it)."""
        patients: set[str] = set()
        for r in resources:
            if r is not None:
                with contextlib.suppress(Exception):
                    patients |= about_patients(rtype, orjson.loads(r) if isinstance(r, bytes) else r)
        await self.hooks.concerned(self.event, patients)

    # --- the server's published definitions (public to any authenticated caller: no patient data) -

    def definition(self, rtype: str, rid: str) -> dict:
        """One of the static profiles (fhir/profiles.py), or 404."""
        sd = self.profiles_.read(rtype, rid)
        if sd is None:
            raise not_found(rtype, rid)
        return sd

    def definitions(self, rtype: str, params) -> list[dict]:
        return self.profiles_.search(rtype, params)

    def supported_profiles(self, rtype: str) -> list[str]:
        return self.profiles_.supported(rtype)

    # --- reads -----------------------------------------------------------------------------------

    async def read(self, rtype: str, rid: str) -> Version:
        """The current version; 410 for a deleted resource the caller could see, 404 otherwise."""
        self.require("r", rtype)
        v = await self.repo.read(rtype, rid, unit=self.unit_)
        if v is None:
            latest = await self.repo.latest(rtype, rid, unit=self.unit_)
            if latest is not None and latest.deleted and (self._fast("r", rtype) or await self._sees(
                    "r", await self.repo.vread(rtype, rid, latest.version - 1, unit=self.unit_))):
                err = gone(rtype, rid)
                err.headers.update(_version_headers(latest))
                raise err
            raise not_found(rtype, rid)
        if not await self.access.may_read("r", rtype, v.json):
            await self._refuse(rtype, v.json)  # the patient's audit learns of it; the caller does not
            raise not_found(rtype, rid)  # never confirm existence to someone who may not see it
        await self._disclose([v])
        return v

    async def vread(self, rtype: str, rid: str, vid: int) -> Version:
        """One version, if the caller may see the resource as it is now *and* that version (a
        document moved from A's record to B's is not A's to read any more, not even its past)."""
        self.require("r", rtype)
        missing = FhirError(404, "not-found", f"{rtype}/{rid} has no version {vid}")
        v = await self.repo.vread(rtype, rid, vid, unit=self.unit_)
        if v is None:
            raise missing
        if not self._fast("r", rtype):
            now, _ = await self._last_content(rtype, rid)
            if not await self._sees("r", now):
                await self._refuse(rtype, now.json if now is not None else None)
                raise missing
        if v.deleted:
            err = FhirError(410, "deleted", f"version {vid} of {rtype}/{rid} is a deletion")
            err.headers.update(_version_headers(v))
            raise err
        if not await self.access.may_read("r", rtype, v.json):
            await self._refuse(rtype, v.json)
            raise missing
        await self._disclose([v])
        return v

    async def _latest(self, perm: str, rtype: str, rid: str) -> Version | None:
        """The newest history entry of a resource the caller may see with `perm` (None otherwise)."""
        now, latest = await self._last_content(rtype, rid)
        if latest is None:
            return None
        if not (self._fast(perm, rtype) or await self._sees(perm, now)):
            await self._refuse(rtype, now.json if now is not None else None)
            return None
        return latest

    async def history(self, rtype: str | None, rid: str | None, *, since: datetime | None,
                      before: tuple[datetime, str, str] | None, count: int) -> HistoryPage:
        """Instance (`rid`), type or system (`rtype` None) history, newest first, `count` at most."""
        if rid is not None:
            assert rtype is not None
            self.require("r", rtype)
            latest = await self._latest("r", rtype, rid)
            if latest is None:
                raise not_found(rtype, rid)
            versions, more = await self._merged((rtype,), rid, since, before, count)
            versions = [v for v in versions if v.deleted or await self.access.may_read("r", rtype, v.json)]
            return HistoryPage(await self._disclose(versions), more, latest.version)
        types = (rtype,) if rtype is not None else self.repo.types
        if rtype is None:
            self.require("s", None)
        allowed = []
        for t in types:
            decision = self.access.decide("s", t)
            if decision.effect is Effect.DENY:
                if rtype is not None:
                    raise _denied("s", t, decision.reason)
                continue
            if decision.effect is Effect.FILTER:
                # Delete tombstones carry no content to decide on: no filtered type or system history.
                raise forbidden("type and system history are not available to tokens restricted to a patient "
                                "or a granular scope; use instance history")
            allowed.append(t)
        versions, more = await self._merged(tuple(allowed), None, since, before, count)
        return HistoryPage(await self._disclose(versions), more)

    async def _merged(self, types: tuple[str, ...], rid: str | None, since, before, count: int
                      ) -> tuple[list[Version], bool]:
        """Merge the newest `count` (+1 to know if there is more) versions of each type's history."""
        if not count:
            return [], False
        per_type = []
        for t in types:
            type_before = None
            if before is not None:
                lu, cursor_type, hid = before
                if t == cursor_type:
                    type_before = (lu, hid)
                elif t < cursor_type:  # sorts below the cursor at equal time: all of that instant remains
                    type_before = (lu, "\uffff")
                else:
                    type_before = (lu, "")
            per_type.append(await self.repo.history(t, rid=rid, since=since, before=type_before, count=count + 1,
                                                    unit=self.unit_))
        key: Callable[[Version], tuple] = lambda v: (v.last_updated, v.type, history_id(v.id, v.version))  # noqa: E731
        out: list[Version] = []
        for v in heapq.merge(*per_type, key=key, reverse=True):
            out.append(v)
            if len(out) > count:
                break
        return out[:count], len(out) > count

    def binary_content(self, v: Version) -> AsyncIterator[bytes]:
        """The GridFS content of a Binary version this handle already returned (checked then)."""
        return self.repo.binaries.stream(v.binary_file, session=self.unit_.session if self.unit_ else None)

    # --- search ----------------------------------------------------------------------------------

    async def search(self, rtype: str, query, *, compartment: str | None, sort: list, count: int,
                     after: list | None, want_total: bool) -> SearchPage:
        return await search.run(self, rtype, query, compartment=compartment, sort=sort, count=count,
                                after=after, want_total=want_total)

    async def includes(self, query, page: SearchPage) -> tuple[list[Version], bool]:
        return await search.includes(self, query, page)

    async def everything(self, patient: str, types: tuple[str, ...], *, since: datetime | None, count: int,
                         after: tuple[int, str] | None, docs: dict | None = None
                         ) -> tuple[list[Version], tuple[int, str] | None]:
        """A page of the patient's compartment (`Patient/{id}/$everything`); the caller must see the
        Patient itself (404 otherwise). `docs`, when given, receives the page's stored documents
        (for its includes, which then need not read them again)."""
        await self.read("Patient", patient)
        return await search.everything(self, patient, types, since, count, after, docs)

    @property
    def referenced_types(self) -> tuple[str, ...]:
        """The stored types outside any patient's compartment that a record refers to (the
        professionals, their roles and organizations): what `$everything` brings along."""
        inside = set(self.compartment_types)
        return tuple(t for t in self.repo.types if t not in inside)

    # --- bulk export (records/export.py) ------------------------------------------------------------

    async def export_kickoff(self, kind: str, patient: str | None, types: list[str] | None, since: datetime | None,
                             request: str, base: str) -> str:
        """Queue an export of what this caller may search (`kind`: system, patients or patient);
        the job's id. A patient-level export needs the Patient to be visible (404 otherwise)."""
        if patient is not None:
            await export.visible_patient(self, patient)
        chosen = export.check_types(self, kind, types) if types is not None else export.default_types(self, kind)
        return await self.repo.exports.create({
            "owner": principal_key(self.access.principal), "principal": export.principal_doc(self.access.principal),
            "kind": kind, "rtype": None if kind == export.SYSTEM else "Patient", "patient": patient,
            "types": chosen, "since": since, "until": now_ms(), "request": request, "base": base})

    async def export_job(self, jid: str) -> tuple[dict, list[dict]]:
        """A job of this caller and its recorded parts (404 for anyone else; 410 once expired)."""
        job = await export.owned_job(self, jid)
        return job, await self.repo.exports.part_list(jid)

    async def export_cancel(self, jid: str) -> None:
        await export.owned_job(self, jid)
        await self.repo.exports.cancel(jid)

    async def export_file(self, jid: str, n: int) -> tuple[dict, AsyncIterator[bytes]]:
        """An output file (the part record and its content); its disclosure is reported to the hooks."""
        return await export.file_of(self, jid, n)

    async def matching(self, rtype: str, query, limit: int) -> list[Version]:
        """Resources matching conditional-interaction criteria (what a search would find)."""
        return await search.matching(self, rtype, query, limit)

    # --- writes ----------------------------------------------------------------------------------

    async def _check_write(self, perm: str, rtype: str, before: Version | None, after: dict | None) -> None:
        old = orjson.loads(before.json) if before is not None and before.json is not None else None
        problem = await self.access.write_problem(perm, rtype, old, after)
        if problem:
            status, reason = problem
            await self._refuse(rtype, old, after)
            raise FhirError(status, "forbidden" if status == 403 else "business-rule", reason)
        if after is not None and rtype != "Patient":
            await self._patients_exist(rtype, after)

    async def _patients_exist(self, rtype: str, resource: dict) -> None:
        """A resource of a patient's record names a patient that exists (400 otherwise, as the
        reference implementation answers): a record cannot hold data of no one."""
        for pid in sorted(about_patients(rtype, resource)):
            if await self.repo.read("Patient", pid, unit=self.unit_) is None:
                raise FhirError(400, "invalid", f"{rtype} refers to Patient/{pid}, which does not exist",
                                [f"{rtype}.{ABOUT_PARAMS[rtype][0]}"] if rtype in ABOUT_PARAMS else [])

    def _provenance(self, rtype: str, rid: str, about: dict | None, supplied: dict | None) -> ProvenanceOf | None:
        """The builder of this write's Provenance (records/provenance.py), about the patients whose
        record the version written (or, for a deletion, the one deleted) belongs to; 400 first when
        the client's own Provenance (`supplied`, X-Provenance) does not describe this write."""
        patients = about_patients(rtype, about) if about is not None else set()
        labels = dmp.labels(about) & FOLLOWING if about is not None else set()
        return self.recorder.for_write(self.event.principal, rtype, rid, patients, supplied, labels)

    async def _visible_before(self, perm: str, rtype: str, rid: str) -> Version | None:
        """The current version a write replaces; 404 when the caller may not see it."""
        before = await self.repo.read(rtype, rid, unit=self.unit_)
        if before is not None and not await self.access.may_read(perm, rtype, before.json):
            await self._refuse(rtype, before.json)
            raise not_found(rtype, rid)
        return before

    async def create(self, rtype: str, resource: dict, *, content: bytes | None = None,
                     rid: str | None = None, provenance: dict | None = None) -> Version:
        """Create with a new id (or `rid`, pre-assigned by a transaction); the check runs on the
        resource with the id it will be stored under. `provenance`, on every write: the client's
        own Provenance (X-Provenance), checked, then stored with the write."""
        self.require("c", rtype)
        rid = rid or str(uuid.uuid4())
        resource = {**resource, "id": rid}
        await self._check_write("c", rtype, None, resource)
        if rtype == trail.AUDIT_TYPE and self.trail is not None:
            return await self._received_audit(resource)
        prov = self._provenance(rtype, rid, resource, provenance)
        v = await self.repo.create(rtype, resource, content=content, rid=rid, unit=self.unit_, provenance=prov)
        await self.hooks.written(self.event, None, v)
        await self._labels_follow(rtype, None, resource)
        return v

    async def _received_audit(self, resource: dict) -> Version:
        """An AuditEvent from another system (IHE ITI-20) joins the audit trail's hash chains, so
        `$verify` covers it; never inside a transaction, whose rollback could not take it back."""
        if self.in_unit:
            raise FhirError(422, "business-rule", "AuditEvents are appended to the audit trail and cannot be part of "
                                                  "a transaction; send them alone or in a batch")
        assert self.trail is not None
        v = await self.trail.received(resource)
        await self.hooks.written(self.event, None, v)
        return v

    async def update(self, rtype: str, rid: str, resource: dict, *, if_match: int | None = None,
                     content: bytes | None = None, provenance: dict | None = None) -> tuple[Version, bool]:
        """Update, or create with the client's id; (version, created)."""
        self.require("u", rtype)
        before = await self._visible_before("u", rtype, rid)
        resource = {**resource, "id": rid}
        await self._check_write("u", rtype, before, resource)
        prov = self._provenance(rtype, rid, resource, provenance)
        v, created = await self.repo.update(rtype, rid, resource, if_match=if_match, content=content,
                                            unit=self.unit_, provenance=prov)
        await self.hooks.written(self.event, before, v)
        await self._labels_follow(rtype, before, resource)
        return v, created

    async def patch(self, rtype: str, rid: str, apply: Callable[[Version], dict], *,
                    if_match: int | None = None, provenance: dict | None = None) -> Version:
        """Apply `apply(current) -> new resource` to the current version and store it, guarded by
        the version patched: a concurrent update makes us re-apply on top of it, never lose it."""
        self.require("u", rtype)
        for _ in range(MAX_WRITE_ATTEMPTS):
            current = await self._visible_before("u", rtype, rid)
            if current is None:
                latest = await self._latest("u", rtype, rid)
                raise gone(rtype, rid) if latest is not None and latest.deleted else not_found(rtype, rid)
            if if_match is not None and if_match != current.version:
                raise FhirError(412, "conflict", f"If-Match expected version {if_match} but {rtype}/{rid} is at "
                                                 f"version {current.version}")
            patched = apply(current)
            await self._check_write("u", rtype, current, patched)
            prov = self._provenance(rtype, rid, patched, provenance)
            try:
                v, _ = await self.repo.update(rtype, rid, patched, if_match=current.version, unit=self.unit_,
                                              provenance=prov)
            except FhirError as exc:
                if exc.status == 412 and if_match is None and not self.in_unit:
                    continue  # someone updated in between: re-apply the patch on their version
                raise
            await self.hooks.written(self.event, current, v)
            await self._labels_follow(rtype, current, patched)
            return v
        raise FhirError(409, "conflict", f"{rtype}/{rid} is being updated concurrently; try again")

    async def _labels_follow(self, rtype: str, before: Version | None, after: dict) -> None:
        """A document's content follows its visibility: when a DocumentReference is masked or
        hidden from the patient (or no longer is), the Binaries its attachments point to, in the
        same record, get the same labels, as new versions (their content is kept). Otherwise a
        masked report's PDF would stay readable by id."""
        if rtype != "DocumentReference":
            return
        wanted = dmp.labels(after) & FOLLOWING
        old = dmp.labels(orjson.loads(before.json)) & FOLLOWING if before is not None and before.json else set()
        if wanted == old:
            return
        patients = about_patients(rtype, after)
        followers = [f"{rtype}/{after.get('id')}"]
        for bid in _attached_binaries(after, self.base_url):
            current = await self.repo.read("Binary", bid, unit=self.unit_)
            if current is None or current.json is None:
                continue
            binary = orjson.loads(current.json)
            if about_patients("Binary", binary) != patients or dmp.labels(binary) & FOLLOWING == wanted:
                continue
            binary = _with_labels(binary, wanted, keep_stamp=False)
            v, _ = await self.repo.update("Binary", bid, binary, if_match=current.version, unit=self.unit_,
                                          keep_content=current,
                                          provenance=self._provenance("Binary", bid, binary, None))
            await self.hooks.written(self.event, current, v)
            followers.append(f"Binary/{bid}")
        # the Provenances of their earlier versions too: they tell who wrote what, and when
        await self.repo.relabel_appended("Provenance", {field_name(REFERENCE, "target"): {"$in": followers}},
                                         lambda r: _with_labels(r, wanted, keep_stamp=True), unit=self.unit_)

    async def delete(self, rtype: str, rid: str, *, if_match: int | None = None,
                     provenance: dict | None = None) -> Version | None:
        """Write a tombstone; None when there was nothing to delete (delete is idempotent)."""
        self.require("d", rtype)
        before = await self._visible_before("d", rtype, rid)
        if before is not None:
            await self._check_write("d", rtype, before, None)
        old = orjson.loads(before.json) if before is not None and before.json is not None else None
        prov = self._provenance(rtype, rid, old, provenance)
        v = await self.repo.delete(rtype, rid, if_match=if_match, unit=self.unit_, provenance=prov)
        if v is not None:
            await self.hooks.written(self.event, before, v)
        return v

    # --- explanations ----------------------------------------------------------------------------

    async def explain_access(self, patient: str, actor: str, resource: str | None, action: str) -> list[dict]:
        """Why `actor` may (not) do `action` on `patient`'s record or on `resource` (Type/id) of it.
        The caller must see the Patient and the resource it asks about (404 otherwise)."""
        await self.read("Patient", patient)
        doc, rtype = None, None
        if resource is not None:
            rtype, _, rid = resource.partition("/")
            if rtype not in self.repo.types or not rid:
                raise FhirError(400, "value", "resource is a reference Type/id to a resource of the record",
                                ["resource"])
            doc = orjson.loads((await self.read(rtype, rid)).json or b"{}")
        try:
            return await self.access.explain(patient, actor, doc, rtype, action)
        except PermissionError as exc:
            raise forbidden(str(exc)) from None
        except ValueError as exc:
            raise FhirError(400, "value", str(exc)) from None

    # --- closure and destruction (records/destruction.py) -----------------------------------------

    async def destroy(self, patient: str, reason: str | None) -> dict:
        """Destroy `patient`'s closed record on this caller's request (the finished job, with its
        signed receipt). The caller must be allowed to delete that Patient and see it (404 otherwise,
        410 once destroyed for those who could see it); the decision point says whether they may ask
        and whether the grace period applies to them."""
        if self.destroyer is None:
            raise FhirError(501, "not-supported", "record destruction is not configured")
        self.require("d", "Patient")
        v = await self.repo.read("Patient", patient, unit=self.unit_)
        if v is None:
            await self.read("Patient", patient)  # 410 or 404, as a read would answer
        assert v is not None
        if not await self.access.may_read("d", "Patient", v.json):
            await self._refuse("Patient", v.json)
            raise not_found("Patient", patient)
        when = self.access.destruction(patient)
        if when == DESTROY_NEVER:
            raise forbidden("only the patient, or an administrator on the patient's documented request, has a record "
                            "destroyed")
        if when != DESTROY_NOW and not (reason or "").strip():
            raise FhirError(400, "required", "reason is required: the patient's documented request", ["reason"])
        return await self.destroyer.destroy(v, requester(self.access.principal), reason,
                                            immediate=when == DESTROY_NOW)

    # --- the audit trail ------------------------------------------------------------------------

    async def access_history(self, patient: str, *, count: int, after: list | None) -> AccessHistoryPage:
        """A page of the patient's access history, newest first, with the names and documents it
        mentions as far as the caller may see them (records/access_history.py)."""
        return await access_history.run(self, patient, count=count, after=after)

    async def verify_audit(self) -> tuple[list[dict], int]:
        """Check the audit trail's hash chains (records/trail.py): (findings, chains checked). Only
        for a caller who may search every AuditEvent, unfiltered."""
        if self.access.decide("s", "AuditEvent").effect is not Effect.PERMIT:
            raise forbidden("verifying the audit trail needs an unrestricted AuditEvent search permission")
        return await trail.verify(self.repo)

    # --- units of work ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def unit(self, *, atomic: bool = True) -> AsyncIterator[Unit]:
        """A unit of work for several interactions (a transaction Bundle, a conditional delete of
        several matches). Inside one already, it is that one."""
        if self.unit_ is not None:
            yield self.unit_
            return
        async with self.repo.unit(atomic=atomic) as unit:
            yield unit


FOLLOWING = frozenset({dmp.MASKED, dmp.HIDDEN_FROM_PATIENT})


def _with_labels(resource: dict, wanted: AbstractSet[str], *, keep_stamp: bool) -> dict:
    """`resource` with the DMP visibility labels `wanted` (others kept); without its version stamp
    unless `keep_stamp` (a write-once record rewritten in place keeps it)."""
    meta = dict(resource.get("meta") or {})
    security = [c for c in meta.get("security") or () if not (
        isinstance(c, dict) and c.get("system") == dmp.SECURITY_SYSTEM and c.get("code") in FOLLOWING)]
    security += [{"system": dmp.SECURITY_SYSTEM, "code": code} for code in sorted(wanted)]
    if not keep_stamp:
        meta.pop("versionId", None)
        meta.pop("lastUpdated", None)
    if security:
        meta["security"] = security
    else:
        meta.pop("security", None)
    out = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        out["meta"] = meta
    return out


def _attached_binaries(doc: dict, base_url: str) -> list[str]:
    """Ids of the local Binaries a DocumentReference's attachments point to."""
    out = []
    for content in doc.get("content") or ():
        url = (content.get("attachment") or {}).get("url") if isinstance(content, dict) else None
        if not isinstance(url, str):
            continue
        if url.startswith(base_url.rstrip("/") + "/"):
            url = url[len(base_url.rstrip("/")) + 1:]
        kind, _, bid = url.partition("/")
        if kind == "Binary" and bid and "/" not in bid:
            out.append(bid)
    return out


def _version_headers(v: Version) -> dict[str, str]:
    from email.utils import format_datetime

    return {"ETag": v.etag, "Last-Modified": format_datetime(v.last_updated, usegmt=True)}
