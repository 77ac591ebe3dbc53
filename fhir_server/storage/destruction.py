"""Physical destruction of stored resources, resumable after a crash. Knows nothing of HTTP, of
access rules or of what a patient's record is: the caller (records/destruction.py) says which
resources go; this module removes them for good and remembers only that their ids existed.

Why this shape (docs/decisions.md, "Record closure and destruction"):

* A destruction is a *job* document in `_destructions`, `_id` = a digest of the Patient and its
  version (so asking twice finds the same job), holding the whole manifest before anything is
  removed: every resource with its last version, the SHA-256 of every stored version's JSON, the
  GridFS files and the unique-key claims. Removal then follows the manifest with idempotent
  deletes (`delete_many` by id, markers inserted with duplicates ignored), so a job interrupted at
  any point is simply run again from the start of its purge, by the server at start-up or the CLI.
* Ids never come back to life: each removed resource leaves a *marker* in `_destroyed`,
  `_id` = SHA-256("Type/id"), with its last version number and the instant — no content, no
  patient, not even the id in clear. The repository answers 410 for a marked id and numbers a
  later write with the same id after the marker (`Repository.destroyed`).
* When the job is done, the document keeps its digest id, counts and the receipt's AuditEvent id,
  and forgets the patient and the manifest (the receipt, in the audit trail, keeps those).

Every removal call counts as a step for crash injection (`crash_after`, tests only).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from datetime import datetime

from pymongo import ASCENDING, IndexModel
from pymongo.errors import BulkWriteError

from fhir_server.storage import exports
from fhir_server.storage.documents import (
    F_BINARY,
    F_ID,
    F_JSON,
    F_UPDATED,
    F_VERSION,
    H_OP,
    H_RESOURCE_ID,
    OP_DELETE,
    aware,
    history_collection,
    now_ms,
)

JOBS = "_destructions"
MARKERS = "_destroyed"
PENDING, DONE = "pending", "done"
BATCH = 500  # ids per delete: one round trip per type and batch, bounded command size
DUPLICATE_KEY = 11000
# bulk export (storage/exports.py, another feature's): removed with the record where present
EXPORT_JOBS, EXPORT_BUCKET, EXPORT_SIDE = exports.JOBS, exports.BUCKET, (exports.PARTS, exports.LEASES)


def marker_id(rtype: str, rid: str) -> str:
    """The marker of a removed resource: its id is not kept in clear."""
    return hashlib.sha256(f"{rtype}/{rid}".encode()).hexdigest()


def job_id(patient: str, version: int) -> str:
    """The same Patient at the same version is one job, however often it is asked for."""
    return hashlib.sha256(f"Patient/{patient}/_history/{version}".encode()).hexdigest()[:32]


def _chunks(items: list, size: int = BATCH) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Destructions:
    """Jobs, manifests, markers and the idempotent purge, on the repository's database."""

    def __init__(self, repo, crash_after: int | None = None) -> None:
        self.repo = repo
        self.db = repo.db
        self.jobs = self.db[JOBS]
        self.markers = self.db[MARKERS]
        self.crash_after = crash_after  # tests only: os._exit at the N-th removal call
        self._steps = 0

    async def ensure_indexes(self) -> None:
        from fhir_server.storage.indexes import ensure_indexes_of

        await ensure_indexes_of(self.jobs, [IndexModel([("state", ASCENDING)], name="state")])

    def _step(self) -> None:
        if self.crash_after is not None:
            self._steps += 1
            if self._steps >= self.crash_after:
                os._exit(71)

    # --- jobs ------------------------------------------------------------------------------------

    async def get(self, jid: str) -> dict | None:
        return await self.jobs.find_one({"_id": jid})

    async def create(self, job: dict) -> dict:
        """Insert a pending job (its manifest included); an existing one with that id is returned."""
        try:
            await self.jobs.insert_one({**job, "state": PENDING, "created": now_ms()})
        except Exception as exc:
            if getattr(exc, "code", None) != DUPLICATE_KEY:
                raise
        found = await self.get(job["_id"])
        assert found is not None
        return found

    async def update(self, jid: str, fields: dict) -> None:
        await self.jobs.update_one({"_id": jid}, {"$set": fields})

    async def pending(self) -> list[dict]:
        return [d async for d in self.jobs.find({"state": PENDING}, sort=[("created", ASCENDING)])]

    async def all(self) -> list[dict]:
        return [d async for d in self.jobs.find({}, projection={"manifest": 0}, sort=[("created", ASCENDING)])]

    async def finish(self, jid: str, fields: dict) -> None:
        """Done: keep the counts and the receipt's id; forget the patient and the manifest."""
        await self.jobs.replace_one({"_id": jid}, {"_id": jid, "state": DONE, "done": now_ms(), **fields})

    # --- what a record holds ---------------------------------------------------------------------

    async def current_about(self, rtype: str, field: str, value: str) -> list[tuple[str, int, bytes]]:
        """(id, version, JSON) of current resources whose index `field` holds `value` (indexed)."""
        cursor = self.repo._current[rtype].find({field: value}, projection={F_ID: 1, F_VERSION: 1, F_JSON: 1})
        return [(d[F_ID], d[F_VERSION], d[F_JSON]) async for d in cursor]

    async def deleted_about(self, rtype: str, about: Callable[[bytes], bool]) -> list[tuple[str, int]]:
        """(id, tombstone version) of deleted resources whose last content satisfies `about`. History
        has no index fields, so this reads the type's tombstones (docs/benchmarks.md: its cost)."""
        hist = self.db[history_collection(rtype)]
        out = []
        async for t in hist.find({H_OP: OP_DELETE}, projection={H_RESOURCE_ID: 1, F_VERSION: 1}):
            rid, version = t[H_RESOURCE_ID], t[F_VERSION]
            if await self.repo._current[rtype].find_one({F_ID: rid}, projection={F_ID: 1}) is not None:
                continue  # re-created since: the current document decides
            last = await hist.find_one({H_RESOURCE_ID: rid, F_VERSION: version - 1}, projection={F_JSON: 1})
            if last is not None and last.get(F_JSON) and about(last[F_JSON]):
                out.append((rid, version))
        return out

    async def versions(self, rtype: str, ids: list[str]) -> list[dict]:
        """Every history version of these resources: {id, v, sha256 of the stored JSON (None for a
        tombstone), GridFS file}."""
        out = []
        for part in _chunks(ids):
            cursor = self.db[history_collection(rtype)].find(
                {H_RESOURCE_ID: {"$in": part}}, projection={H_RESOURCE_ID: 1, F_VERSION: 1, F_JSON: 1, F_BINARY: 1})
            async for d in cursor:
                body = d.get(F_JSON)
                out.append({"id": d[H_RESOURCE_ID], "v": d[F_VERSION],
                            "sha256": hashlib.sha256(body).hexdigest() if body else None,
                            "file": d.get(F_BINARY)})
        out.sort(key=lambda x: (x["id"], x["v"]))
        return out

    async def claims_of(self, owner: str) -> list[str]:
        """The unique-key claims `owner` holds (storage/unique.py)."""
        return [d["_id"] async for d in self.repo.uniques.col.find({"owner": owner}, projection={"_id": 1})]

    # --- the purge (idempotent: run again from the start after a crash) ----------------------------

    async def purge(self, manifest: dict) -> None:
        """Remove what the manifest lists: markers first (an id is never free in between), then
        current documents, history versions, GridFS contents, unique-key claims."""
        now = now_ms()
        for rtype, items in manifest["resources"].items():
            for part in _chunks(items):
                await self._mark(rtype, part, now)
                self._step()
                ids = [item["id"] for item in part]
                await self.repo._current[rtype].delete_many({F_ID: {"$in": ids}})
                self._step()
                await self.db[history_collection(rtype)].delete_many({H_RESOURCE_ID: {"$in": ids}})
                self._step()
        for file_id in manifest.get("files", ()):
            await self.repo.binaries.delete(file_id)
            self._step()
        for claim in manifest.get("claims", ()):
            await self.repo.uniques.col.delete_many({"_id": claim["key"], "owner": claim["owner"]})
            self._step()
        await self.purge_exports(list(manifest.get("exports", ())))

    async def _mark(self, rtype: str, items: list, at: datetime) -> None:
        docs = [{"_id": marker_id(rtype, item["id"]), "v": item["v"], "at": at} for item in items]
        try:
            await self.markers.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", ())):
                raise

    async def export_jobs_of(self, patient: str) -> list[str]:
        """Bulk export jobs (storage/exports.py, where that feature exists) asked about this patient
        or by them: their output files hold the record."""
        if not await self.db.list_collection_names(filter={"name": EXPORT_JOBS}):
            return []
        flt = {"$or": [{"patient": patient}, {"principal.patient": patient},
                       {"principal.fhir_user": f"Patient/{patient}"}]}
        return [d["_id"] async for d in self.db[EXPORT_JOBS].find(flt, projection={"_id": 1})]

    async def purge_exports(self, jobs: list[str]) -> None:
        """An export job's output files, checkpoints, leases and the job itself."""
        if not jobs:
            return
        from gridfs import AsyncGridFSBucket
        from gridfs.errors import NoFile

        bucket = AsyncGridFSBucket(self.db, bucket_name=EXPORT_BUCKET)
        for jid in jobs:
            async for f in self.db[f"{EXPORT_BUCKET}.files"].find({"metadata.job": jid}, projection={"_id": 1}):
                try:
                    await bucket.delete(f["_id"])
                except NoFile:
                    pass
            for collection in EXPORT_SIDE:
                await self.db[collection].delete_many({"job": jid})
            await self.db[EXPORT_JOBS].delete_one({"_id": jid})
            self._step()

    async def marker(self, rtype: str, rid: str) -> tuple[int, datetime] | None:
        doc = await self.markers.find_one({"_id": marker_id(rtype, rid)})
        return (doc["v"], aware(doc["at"])) if doc is not None else None


def stored_at(doc: dict) -> datetime:
    return aware(doc[F_UPDATED])
