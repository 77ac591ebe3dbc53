"""Bulk Data export (https://hl7.org/fhir/uv/bulkdata/export.html): jobs, their runner, their files.

What an export contains is exactly what its caller could find by searching each type: every page
is read through a `Records` handle built for the principal who started the job, with the same
access filter as a search (scopes, the patient's Consents, security labels) and the same
per-resource check. Kinds:

* `Patient/{id}/$export`: that patient's compartment (as `Patient/{id}/$everything` without the
  referenced resources; the caller must see the Patient, 404 otherwise);
* `Patient/$export`: the compartment types, resources in some patient's compartment;
* `$export` (system): every type the caller may search.

Each type is read in `_id` order, restricted to resources last updated at or before the job's
`transactionTime` (the kick-off instant: the spec's "SHOULD NOT include resources modified after")
and, with `_since`, after it. The runner (`ExportRunner`, one task per worker process) claims
queued jobs and jobs whose worker died (storage/exports.py: leases and part checkpoints by unique
inserts), writes NDJSON part by part into GridFS and records each part with what it discloses:
(patient, `Type/id/_history/v`) pairs. Nothing is disclosed while the job runs; a download is the
disclosure, audited per patient through the hooks like any read (docs/decisions.md, "Bulk export").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from fhir_server.access.compartment import about_patients, in_compartment_types, patients_of
from fhir_server.access.decision import AccessDecisionPoint, Effect
from fhir_server.access.filters import patient_compartment_filter, restrict
from fhir_server.auth.principal import Principal
from fhir_server.config import Settings
from fhir_server.fhir import interactions as k
from fhir_server.fhir.binary_json import with_data
from fhir_server.fhir.interactions import Interaction
from fhir_server.fhir.outcome import FhirError
from fhir_server.fhir.profiles import Profiles
from fhir_server.records.hooks import Event, Hooks
from fhir_server.storage.documents import F_ID, F_UPDATED, Version
from fhir_server.storage.exports import CANCELLED, COMPLETED, EXPIRED, FAILED, RUNNING, ExportStore
from fhir_server.storage.repository import Repository

log = logging.getLogger("fhir_server.export")

SYSTEM, PATIENTS, PATIENT = "system", "patients", "patient"
WRITE_SIZE = 255 * 1024  # lines are handed to GridFS a chunk at a time (memory: one chunk)
# what a job remembers of who started it: enough to decide again as they would be decided for
_PRINCIPAL_FIELDS = ("kind", "subject", "client_id", "patient", "fhir_user", "unrestricted", "role", "organization",
                     "operator", "btg_reason")


def principal_doc(p: Principal) -> dict:
    doc = {f: getattr(p, f) for f in _PRINCIPAL_FIELDS}
    doc["scopes"] = sorted(p.scopes)
    doc["purpose_of_use"] = list(p.purpose_of_use)
    return doc


def principal_from(doc: dict) -> Principal:
    fields: dict[str, Any] = {f: doc.get(f) for f in _PRINCIPAL_FIELDS if f not in ("unrestricted", "operator")}
    return Principal(**fields, unrestricted=bool(doc.get("unrestricted")), operator=bool(doc.get("operator")),
                     scopes=frozenset(doc.get("scopes") or ()), purpose_of_use=tuple(doc.get("purpose_of_use") or ()))


@dataclass(slots=True)
class Page:
    versions: list[Version]
    last_id: str | None  # the last id read (visible or not): where the next page starts
    exhausted: bool


async def visible_patient(records, patient: str) -> None:
    """404 unless the caller may read Patient/{patient} (nothing is disclosed by asking)."""
    v = await records.repo.read("Patient", patient, unit=records.unit_)
    if v is None or not await records.access.may_read("r", "Patient", v.json):
        raise FhirError(404, "not-found", f"Patient/{patient} is not known")


def default_types(records, kind: str) -> list[str]:
    """The types an export covers without `_type`: the compartment's, or every stored type; only
    those the caller may search at all."""
    types = list(records.compartment_types) if kind != SYSTEM else list(records.types)
    return [t for t in types if records.access.decide("s", t).effect is not Effect.DENY]


def check_types(records, kind: str, asked: list[str]) -> list[str]:
    """`_type` as asked: known types (400), of the compartment for patient-level exports (400),
    that the caller may search (403)."""
    unknown = [t for t in asked if t not in records.types]
    if unknown:
        raise FhirError(400, "value", f"_type names types this server does not store: {', '.join(unknown)}",
                        ["_type"])
    if kind != SYSTEM:
        outside = [t for t in asked if t not in in_compartment_types()]
        if outside:
            raise FhirError(400, "value", f"a patient-level export covers the Patient compartment; not: "
                                          f"{', '.join(outside)}", ["_type"])
    for t in asked:
        decision = records.access.decide("s", t)
        if decision.effect is Effect.DENY:
            raise FhirError(403, "forbidden", decision.reason or f"the token's scopes do not permit searching {t}")
    return list(dict.fromkeys(asked))


async def page(records, rtype: str, *, kind: str, patient: str | None, since: datetime | None, until: datetime,
               after: str | None, count: int) -> Page | None:
    """The next resources of `rtype` for the caller (None: they may not search it). Same filter as a
    search (a compartment search for a patient-level export), then the per-resource check."""
    within = frozenset([patient]) if patient is not None else None
    access = await records.access.filter("s", rtype, within)
    if access is None:
        return None
    flt: dict = {}
    if patient is not None:
        cf = patient_compartment_filter(rtype, patient)
        if cf is None:
            return Page([], None, True)
        flt = cf
    flt = restrict(flt, access)
    flt = restrict(flt, {F_UPDATED: {"$lte": until, **({"$gte": since} if since is not None else {})}})
    if after is not None:
        flt = restrict(flt, {F_ID: {"$gt": after}})
    rows = await records.repo.find_page(rtype, flt, [(F_ID, 1)], count, unit=records.unit_)
    out = []
    for v, _ in rows:
        if kind == PATIENTS and rtype != "Patient" and not patients_of(rtype, orjson.loads(v.json or b"{}")):
            continue  # Patient/$export: resources in some patient's compartment
        if await records.access.may_read("s", v.type, v.json):
            out.append(v)
    return Page(out, rows[-1][0].id if rows else after, len(rows) < count)


def disclosed(v: Version) -> list[tuple[str | None, str]]:
    """What a line of the file tells about whom, as the audit records it: one pair per patient."""
    ref = f"{v.type}/{v.id}/_history/{v.version}"
    pids = about_patients(v.type, orjson.loads(v.json or b"{}"))
    return [(pid, ref) for pid in sorted(pids)] or [(None, ref)]


async def lines(repo: Repository, v: Version) -> AsyncIterator[bytes]:
    """One NDJSON line: the stored JSON as is, or for a Binary whose content lives in GridFS the JSON
    with its base64 `data` spliced in while streaming (never the whole content in memory)."""
    stored = v.json or b"{}"
    if v.binary_file is None:
        yield stored + b"\n"
        return
    async for piece in with_data(stored, repo.binaries.stream(v.binary_file)):
        yield piece
    yield b"\n"


class _Lost(Exception):
    """Our lease is gone (cancelled, expired, or another worker took over): stop quietly."""


class ExportRunner:
    """Runs export jobs in this worker process: claims, writes parts, checkpoints, finishes; and
    deletes the output of expired jobs."""

    def __init__(self, repo: Repository, decision: AccessDecisionPoint, settings: Settings,
                 profiles: Profiles | None = None, records: Callable[..., Any] | None = None) -> None:
        """`records`: the data handle's class (records/records.py `Records`), handed in by whoever
        builds the runner, so that this module, which `Records` uses, need not import it back."""
        self.repo = repo
        self.records = records
        self.store: ExportStore = repo.exports
        self.decision = decision
        self.settings = settings
        self.profiles = profiles
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.parts_recorded = 0

    async def run_forever(self) -> None:
        poll = self.settings.export_poll_seconds
        while True:
            self.store.kicked.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("export runner: a pass failed; retrying at the next poll")
            try:
                await asyncio.wait_for(self.store.kicked.wait(), poll)
            except TimeoutError:
                pass

    async def tick(self) -> None:
        for jid in await self.store.expired():
            await self.store.expire(jid)
        for job in await self.store.claimable():
            gen = await self.store.claim(job, self.worker, self.settings.export_lease_seconds)
            if gen is not None:
                await self.execute(job, gen)

    def _records(self, job: dict, principal: Principal):
        Records = self.records
        assert Records is not None, "the export runner is built with the data handle's class"
        ix = Interaction(kind=k.OPERATION, method="GET", type=job.get("rtype"), id=job.get("patient"),
                         operation="export")
        event = Event(ix, principal, f"export-{job['_id']}")
        return ix, lambda access: Records(self.repo, access, Hooks(()), event, None, job.get("base", ""),
                                          self.profiles)

    async def execute(self, job: dict, gen: int) -> None:
        jid = job["_id"]
        principal = principal_from(job["principal"])
        ix, make = self._records(job, principal)
        types: list[str] = job["types"]
        lease = self.settings.export_lease_seconds
        await self.store.drop_orphans(jid)
        parts = await self.store.part_list(jid)
        n = len(parts)
        ti, after = (parts[-1]["ti"], parts[-1]["last"]) if parts else (0, None)
        upload = None
        try:
            while ti < len(types):
                rtype = types[ti]
                records = make(await self.decision.prepare(principal, ix, self.repo))  # consent as of now
                count, refs, upload, done, last = 0, [], None, False, after
                buffer = bytearray()
                renewed = asyncio.get_running_loop().time()
                while count < self.settings.export_file_max_resources:
                    want = min(self.settings.export_page_size, self.settings.export_file_max_resources - count)
                    got = await page(records, rtype, kind=job["kind"], patient=job.get("patient"),
                                     since=job.get("since"), until=job["until"], after=last, count=want)
                    if got is None:
                        done = True
                        break
                    for v in got.versions:
                        if upload is None:
                            upload = self.store.open_file(jid, n, rtype)
                        async for chunk in lines(self.repo, v):
                            buffer += chunk
                            if len(buffer) >= WRITE_SIZE:  # GridIn's own writes are costly per call
                                await upload.write(bytes(buffer))
                                buffer.clear()
                        refs += disclosed(v)
                        count += 1
                    last = got.last_id
                    if got.exhausted:
                        done = True
                        break
                    if asyncio.get_running_loop().time() - renewed > lease / 3:
                        await self._renew(jid, gen)
                        renewed = asyncio.get_running_loop().time()
                if upload is not None:
                    if buffer:
                        await upload.write(bytes(buffer))
                    await upload.close()
                    part = {"_id": f"{jid}|{n}", "job": jid, "n": n, "type": rtype, "ti": ti + 1 if done else ti,
                            "last": None if done else last, "file": upload._id, "count": count,
                            "disclosed": [f"{pid or ''} {ref}" for pid, ref in refs]}
                    file_id, upload = upload._id, None
                    if not await self.store.record_part(part):
                        await self.store._delete_file(file_id)
                        raise _Lost
                    n += 1
                    self.parts_recorded += 1
                    if self.settings.test_export_crash_after_part == self.parts_recorded:
                        os._exit(3)  # tests: a worker dies between two parts
                    await self._renew(jid, gen)
                ti, after = (ti + 1, None) if done else (ti, last)
            await self.store.finish(jid, gen, COMPLETED, self.settings.export_retention_seconds)
        except _Lost:
            if upload is not None:
                await upload.abort()
        except asyncio.CancelledError:
            await asyncio.shield(self._interrupted(jid, gen, upload))
            raise
        except Exception:
            log.exception("export job failed")
            if upload is not None:
                await upload.abort()
            await self.store.finish(jid, gen, FAILED, self.settings.export_retention_seconds,
                                    error="the export failed on the server; start a new one")

    async def _renew(self, jid: str, gen: int) -> None:
        job = await self.store.renew(jid, gen, self.settings.export_lease_seconds)
        if job is not None and job.get("state") == CANCELLED:
            await self.store.purge(jid)  # what we recorded after the cancellation deleted the rest
        if job is None or job.get("state") != RUNNING or job.get("lease_gen") != gen:
            raise _Lost

    async def _interrupted(self, jid: str, gen: int, upload) -> None:
        """Shutting down: drop the part being written and give the lease back, so the next worker
        (after a restart, or another one now) resumes after the last recorded part."""
        try:
            if upload is not None:
                await upload.abort()
            await self.store.release(jid, gen)
        except Exception:
            log.warning("export job interrupted; it resumes when its lease expires")


# --- the HTTP side's questions (through Records) ----------------------------------------------------

async def owned_job(records, jid: str) -> dict:
    """The job, if this caller started it; 404 for anyone else and for a cancelled job."""
    job = await records.repo.exports.get(jid)
    if job is None or not records.access.owns(job.get("owner")) or job.get("state") == "cancelled":
        raise FhirError(404, "not-found", "no bulk export job has this id")
    if job.get("state") == EXPIRED:
        raise FhirError(410, "deleted", "this export has expired and its files were deleted; start a new one")
    return job


async def file_of(records, jid: str, n: int) -> tuple[dict, AsyncIterator[bytes]]:
    """An output file of a completed job of this caller, its disclosure told to the hooks (audit)."""
    job = await owned_job(records, jid)
    part = await records.repo.exports.part(jid, n) if job.get("state") == COMPLETED else None
    if part is None:
        raise FhirError(404, "not-found", "no such file in this bulk export")
    pairs = [item.split(" ", 1) for item in part["disclosed"]]  # "patient ref" (no nested arrays on FerretDB)
    await records.hooks.disclosed_refs(records.event, [(pid or None, ref) for pid, ref in pairs])
    return part, records.repo.exports.stream_file(part["file"])
