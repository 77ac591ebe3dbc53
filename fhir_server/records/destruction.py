"""Closure and destruction of a patient's record (the DMP leaflet: "à tout moment, vous pouvez …
en demander la destruction"; issue 11, items 4 and 5).

*Closing* is what it already was: the record-creation Consent(s) set inactive (access/consent_rules.py:
a closed record refuses professionals, writes and break-glass). The patient still reads their copy
(`$everything`) while the record waits for destruction; the record is *closed since* the last change
of its record Consents, and its grace period ends `FHIR_DESTRUCTION_GRACE_SECONDS` later.

*Destroying* a closed record (`Destroyer.destroy`): the patient's explicit request (`$destroy`) runs
at once — the grace period is theirs to waive; an administrator's or operator's (on the patient's
documented request, with its reason), and the CLI's `records destroy-due`, only once it has ended.
What goes (the manifest, storage/destruction.py): every resource *about* the patient (their Patient,
Consents, documents, personal space, Lists, Binaries by securityContext or attached to their
documents, Provenance) with every history version and GridFS content, including resources deleted
earlier; their INS claims; their bulk exports; their pending authorizations and refresh tokens; the
link of their user accounts. What stays: the AuditEvents (the access history) and a marker per id.

The *receipt* — what was removed (counts per type, the SHA-256 of every removed version's stored
JSON), when, on whose request and why — is a JWS signed with the server's current signing key
(auth/keys.py, published at /auth/jwks), stored as the detail of an AuditEvent through the audit
trail (so it joins the hash chain), filed under the patient: `AuditEvent/{id}` and
`AuditEvent?patient=…` find it, and `$destroy` answers it.

Crash-safety: the job (with its manifest and, once made, its receipt) is stored before anything is
removed; every step is idempotent and the receipt's AuditEvent id is fixed by the job, so a job
interrupted anywhere is run again from the start (`resume`, at server start-up and by the CLI).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from joserfc import jws
from pymongo.errors import BulkWriteError, DuplicateKeyError

from fhir_server.access.compartment import ABOUT_PARAMS, about_patients
from fhir_server.access.consent_rules import CLOSED, NONE, record_of
from fhir_server.auth.keys import ALG, KeyStore
from fhir_server.auth.principal import Principal
from fhir_server.auth.stores import MongoUserDirectory, StateStore
from fhir_server.fhir import dmp
from fhir_server.fhir.outcome import FhirError
from fhir_server.records.audit import DCM, ENTITY_TYPE, OBJECT_ROLE, agents
from fhir_server.records.trail import AUDIT_TYPE, AuditTrail
from fhir_server.search.registry import REFERENCE, field_name
from fhir_server.storage.destruction import DONE, Destructions, job_id
from fhir_server.storage.documents import F_JSON, F_UPDATED, Version, aware, fhir_instant, now_ms
from fhir_server.storage.repository import Repository

KEPT = frozenset({AUDIT_TYPE})  # the access history survives the record
RECEIPT_TYPE = "urn:fhir-dmp:destruction-receipt"
AUDIT_SUBTYPE = {"system": "urn:fhir-dmp:audit", "code": "record-destruction", "display": "Record destroyed"}
PATIENT_REQUEST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "PATRQT",
                   "display": "patient requested"}
NOW, AFTER_GRACE = "now", "after-grace"  # when a caller's request may run (access/decision.py)
MAX_CONSENTS = 10000


@dataclass(frozen=True, slots=True)
class Closure:
    """A record's state as far as destruction is concerned."""

    patient: str
    state: str  # open | closed | none (consent_rules)
    closed_since: datetime | None = None
    grace_end: datetime | None = None


def _binary_ids(doc: dict) -> set[str]:
    """Local Binaries a DocumentReference's attachments point to (relative references)."""
    out = set()
    for content in doc.get("content") or ():
        url = (content.get("attachment") or {}).get("url") if isinstance(content, dict) else None
        if isinstance(url, str) and url.startswith("Binary/") and url.count("/") == 1:
            out.add(url[len("Binary/"):])
    return out


class Destroyer:
    """Runs destructions: one per process, shared by the API, the start-up resume and the CLI."""

    def __init__(self, repo: Repository, trail: AuditTrail, keys: KeyStore, grace_seconds: int,
                 crash_after: int | None = None, epoch=None) -> None:
        self.repo = repo
        self.trail = trail
        self.keys = keys
        self.grace = timedelta(seconds=grace_seconds)
        self.store = Destructions(repo, crash_after)
        self.users = MongoUserDirectory(repo.db)
        self.auth_state = StateStore(repo.db)
        self.epoch = epoch
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure_indexes(self) -> None:
        await self.store.ensure_indexes()

    # --- what state records are in -----------------------------------------------------------------

    async def closure(self, patient: str) -> Closure:
        docs = await self.repo.find_docs("Consent", {field_name(REFERENCE, "patient"): f"Patient/{patient}"},
                                         MAX_CONSENTS)
        consents = [(orjson.loads(v.json or b"{}"), doc) for v, doc in docs]
        rec = record_of(patient, [c for c, _ in consents])
        if rec.state != CLOSED:
            return Closure(patient, rec.state)
        since = max(aware(doc[F_UPDATED]) for c, doc in consents if dmp.policy_of(c) == dmp.RECORD_POLICY)
        return Closure(patient, CLOSED, since, since + self.grace)

    async def closed_records(self) -> list[Closure]:
        """Every closed record (administrators' retention listing; reads every record Consent)."""
        patients: set[str] = set()
        for v, _ in await self.repo.find_docs("Consent", {}, 10 ** 9):
            c = orjson.loads(v.json or b"{}")
            ref = dmp.ref_of(c.get("patient")) or ""
            if dmp.policy_of(c) == dmp.RECORD_POLICY and ref.startswith("Patient/"):
                patients.add(ref[len("Patient/"):])
        out = []
        for p in sorted(patients):
            closure = await self.closure(p)
            if closure.state == CLOSED:
                out.append(closure)
        return out

    async def jobs(self) -> list[dict]:
        return await self.store.all()

    # --- asking for a destruction ------------------------------------------------------------------

    async def destroy(self, patient: Version, agent: list[dict], reason: str | None, *, immediate: bool) -> dict:
        """Destroy the record of this (current) Patient; the finished job (with `receipt` and
        `receipt_id`). 409 when the record is open, or its grace period runs and `immediate` is
        not granted."""
        pid = patient.id
        closure = await self.closure(pid)
        if closure.state != CLOSED:
            what = "has no record" if closure.state == NONE else "record is open"
            raise FhirError(409, "business-rule", f"the patient's {what}: a record is destroyed once closed (its "
                                                  f"record Consent set inactive)")
        now = now_ms()
        assert closure.grace_end is not None
        if not immediate and now < closure.grace_end:
            raise FhirError(409, "business-rule", f"the record's grace period ends at "
                                                  f"{fhir_instant(closure.grace_end)}: until then only the patient's "
                                                  f"own request destroys it")
        jid = job_id(pid, patient.version)
        job = await self.store.get(jid)
        if job is None:
            manifest, removed, counts = await self._plan(pid)
            job = await self.store.create({
                "_id": jid, "patient": pid, "agent": agent, "reason": reason or "", "requested": now,
                "closed_since": closure.closed_since, "manifest": manifest, "removed": removed, "counts": counts})
        return await self.run(job)

    async def destroy_due(self, agent: list[dict]) -> list[dict]:
        """Every closed record whose grace period has ended (the CLI)."""
        out = []
        now = now_ms()
        for closure in await self.closed_records():
            if closure.grace_end is not None and closure.grace_end <= now:
                patient = await self.repo.read("Patient", closure.patient)
                if patient is not None:
                    out.append(await self.destroy(patient, agent, "retention: grace period ended", immediate=False))
        return out

    async def resume(self) -> list[dict]:
        """Finish the jobs a crash interrupted (start-up, CLI); harmless when there are none."""
        return [await self.run(job) for job in await self.store.pending()]

    # --- running one ----------------------------------------------------------------------------------

    async def run(self, job: dict) -> dict:
        jid = job["_id"]
        lock = self._locks.setdefault(jid, asyncio.Lock())
        async with lock:
            job = await self.store.get(jid) or job
            if job.get("state") == DONE:
                return job
            pid = job["patient"]
            await self.store.purge(job["manifest"])
            await self.auth_state.forget_patient(pid)
            await self.users.unlink_patient(pid)
            if not job.get("receipt"):
                receipt = self._sign(job)
                receipt_id = str(uuid.uuid5(uuid.NAMESPACE_URL, RECEIPT_TYPE + ":" + jid))
                await self.store.update(jid, {"receipt": receipt, "receipt_id": receipt_id})
                job = {**job, "receipt": receipt, "receipt_id": receipt_id}
            await self._record(job)
            done = {"receipt_id": job["receipt_id"], "counts": job["counts"]}
            await self.store.finish(jid, done)  # the receipt itself stays in the audit trail only
            self._locks.pop(jid, None)
        if self.epoch is not None:
            await self.epoch.bump()  # consent caches forget the record's Consents
        return {"_id": jid, "state": DONE, "receipt": job["receipt"], **done}

    async def _plan(self, pid: str) -> tuple[dict, list, dict]:
        """What the record holds: the manifest to purge, the removed versions' hashes, the counts."""
        ref = f"Patient/{pid}"
        targets: dict[str, dict[str, int]] = {}
        docs: list[dict] = []
        for rtype, params in sorted(ABOUT_PARAMS.items()):
            if rtype in KEPT or rtype not in self.repo.types:
                continue
            found = targets.setdefault(rtype, {})
            for rid, version, body in await self.store.current_about(rtype, field_name(REFERENCE, params[0]), ref):
                found[rid] = version
                if rtype == "DocumentReference":
                    docs.append(orjson.loads(body))

            def about(body: bytes, rtype: str = rtype) -> bool:
                return pid in about_patients(rtype, orjson.loads(body))

            for rid, version in await self.store.deleted_about(rtype, about):
                found[rid] = version
        for bid in sorted(set().union(*(_binary_ids(d) for d in docs)) - set(targets.get("Binary", {}))):
            v = await self.repo.read("Binary", bid)  # attached content of no one else
            if v is not None and v.json is not None and about_patients("Binary", orjson.loads(v.json)) <= {pid}:
                targets.setdefault("Binary", {})[bid] = v.version
        patient = await self.repo.read("Patient", pid)
        if patient is not None:
            targets["Patient"] = {pid: patient.version}
        # no nested arrays: FerretDB v1 stores none (docs/mongodb-compat.md)
        manifest: dict = {"resources": {}, "files": [], "claims": [], "exports": []}
        removed: list[dict] = []
        counts: dict = {}
        for rtype in sorted(targets):
            ids = sorted(targets[rtype])
            if not ids:
                continue
            versions = await self.store.versions(rtype, ids)
            last = dict(targets[rtype])
            by_id: dict[str, list] = {}
            for x in versions:
                last[x["id"]] = max(last.get(x["id"], 0), x["v"])
                by_id.setdefault(x["id"], []).append({"v": x["v"], "sha256": x["sha256"]})
                if x["file"] is not None and x["file"] not in manifest["files"]:
                    manifest["files"].append(x["file"])
            manifest["resources"][rtype] = [{"id": rid, "v": last[rid]} for rid in ids]
            removed += [{"resource": f"{rtype}/{rid}", "versions": by_id.get(rid, [])} for rid in ids]
            counts[rtype] = {"resources": len(ids), "versions": len(versions)}
        manifest["claims"] = [{"key": key, "owner": f"Patient/{pid}"} for key in await self.store.claims_of(f"Patient/{pid}")]
        manifest["exports"] = await self.store.export_jobs_of(pid)
        counts["binaryContents"] = len(manifest["files"])
        counts["exports"] = len(manifest["exports"])
        return manifest, removed, counts

    def _sign(self, job: dict) -> str:
        """The receipt: a JWS (RS256, `kid` of the signing key published at /auth/jwks)."""
        payload = {"type": RECEIPT_TYPE, "job": job["_id"], "patient": f"Patient/{job['patient']}",
                   "requestedBy": job["agent"], "reason": job.get("reason", ""),
                   "requested": fhir_instant(job["requested"]), "closedSince": fhir_instant(job["closed_since"]),
                   "completed": fhir_instant(now_ms()), "counts": job["counts"], "removed": job["removed"]}
        kid, key = self.keys.current
        return jws.serialize_compact({"alg": ALG, "kid": kid, "typ": "JOSE", "cty": "json"},
                                     orjson.dumps(payload), key, algorithms=[ALG])

    async def _record(self, job: dict) -> None:
        """The receipt as an AuditEvent through the audit trail (once: its id is the job's)."""
        if await self.repo.read(AUDIT_TYPE, job["receipt_id"]) is not None:
            return
        event = receipt_event(job)
        try:
            if self.trail.enabled:
                await self.trail.store([event])
            else:  # the benchmark's unaudited mode: still kept, outside a chain
                body = self.repo.stamped_json(AUDIT_TYPE, event, 1, event["recorded"])
                await self.repo.append(AUDIT_TYPE, [(event, {F_JSON: body})])
        except (DuplicateKeyError, BulkWriteError):
            if await self.repo.read(AUDIT_TYPE, job["receipt_id"]) is None:
                raise


def receipt_event(job: dict) -> dict:
    """BALP-shaped AuditEvent of a destruction: DICOM 110110 Patient Record, action D, the requester
    and the server as agents, the patient, and the signed receipt as an entity detail."""
    counts = job["counts"]
    resources = sum(c["resources"] for c in counts.values() if isinstance(c, dict))
    versions = sum(c["versions"] for c in counts.values() if isinstance(c, dict))
    agent = list(job.get("agent") or []) or [{"who": {"display": "fhir-server"}, "requestor": True}]
    return {
        "resourceType": "AuditEvent", "id": job["receipt_id"],
        "type": {"system": DCM, "code": "110110", "display": "Patient Record"},
        "subtype": [AUDIT_SUBTYPE], "action": "D", "recorded": fhir_instant(now_ms()), "outcome": "0",
        "outcomeDesc": f"record destroyed: {resources} resources, {versions} versions, "
                       f"{counts.get('binaryContents', 0)} contents",
        "purposeOfEvent": [{"coding": [PATIENT_REQUEST], **({"text": job["reason"]} if job.get("reason") else {})}],
        "agent": agent,
        "source": {"site": "fhir-server", "observer": {"display": "fhir-server"}},
        "entity": [
            {"what": {"reference": f"Patient/{job['patient']}"}, "type": {"system": ENTITY_TYPE, "code": "1"},
             "role": {"system": OBJECT_ROLE, "code": "1"}},
            {"type": {"system": ENTITY_TYPE, "code": "2"}, "role": {"system": OBJECT_ROLE, "code": "20", "display": "Job"},
             "name": "destruction receipt", "description": "JWS (RS256) signed by the server: verify with /auth/jwks",
             "detail": [{"type": RECEIPT_TYPE, "valueBase64Binary": base64.b64encode(job["receipt"].encode()).decode()}]},
        ],
    }


def requester(principal: Principal) -> list[dict]:
    """The agents of a destruction asked through the API (the audit trail's shape)."""
    return agents(principal)


CLI_AGENT = [{"who": {"display": "fhir-server records (administrator command)"}, "requestor": True}]
