"""Bulk export jobs and their output files, in the database (FHIR Bulk Data Access v2,
https://hl7.org/fhir/uv/bulkdata/export.html). Knows nothing of HTTP or of access rules.

Why here and why this shape (docs/decisions.md, "Bulk export"):

* A job is one document of `_bulk_jobs` (what was asked, by whom, its state), so it survives a
  restart and any worker of any server on the same database can run it.
* Output goes to GridFS (bucket `bulk_output`), written part by part through an upload stream
  (memory: one GridFS chunk), so files live with the data, on every machine, and go when the job
  expires.
* FerretDB v1 applies updates by read-modify-write (docs/mongodb-compat.md), so nothing that must
  be exclusive relies on a guarded update. A worker *claims* a job by inserting the lease
  generation `job|gen` into `_bulk_leases` (the unique `_id` admits one claimant per generation),
  and *checkpoints* by inserting each finished part as `job|n` into `_bulk_parts` (one writer per
  part, whoever is first; the other deletes its file). Progress is the parts list, so a job whose
  worker died resumes after its last recorded part once the lease has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhir_server.storage.binaries import gridfs_chunks
from fhir_server.storage.documents import now_ms

JOBS, PARTS, LEASES, BUCKET = "_bulk_jobs", "_bulk_parts", "_bulk_leases", "bulk_output"
QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED, EXPIRED = "queued", "running", "completed", "failed", "cancelled", \
    "expired"
ACTIVE = (QUEUED, RUNNING)
CHUNK = 255 * 1024


class ExportStore:
    """Jobs, leases, parts and output files of bulk exports."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.jobs = db[JOBS]
        self.parts = db[PARTS]
        self.leases = db[LEASES]
        self.files = db[f"{BUCKET}.files"]
        self.bucket = AsyncGridFSBucket(db, bucket_name=BUCKET, chunk_size_bytes=CHUNK)
        self._kicked: asyncio.Event | None = None

    @property
    def kicked(self) -> asyncio.Event:
        """Set when this process queued a job, so its runner starts at once instead of at its next poll."""
        if self._kicked is None:
            self._kicked = asyncio.Event()
        return self._kicked

    async def ensure_indexes(self) -> None:
        from fhir_server.storage.indexes import ensure_indexes_of

        await ensure_indexes_of(self.jobs, [IndexModel([("state", ASCENDING), ("lease_until", ASCENDING)],
                                                       name="state_lease"),
                                            IndexModel([("expires", ASCENDING)], name="expires", sparse=True)])
        await ensure_indexes_of(self.parts, [IndexModel([("job", ASCENDING), ("n", ASCENDING)], name="job_n")])
        await ensure_indexes_of(self.files, [IndexModel([("metadata.job", ASCENDING)], name="job")])

    # --- jobs ------------------------------------------------------------------------------------

    async def create(self, job: dict) -> str:
        """Queue a job (its fields as given, plus id, state, times); returns its id."""
        jid = uuid.uuid4().hex
        now = now_ms()
        await self.jobs.insert_one({**job, "_id": jid, "state": QUEUED, "lease_gen": 0, "lease_until": now,
                                    "created": now})
        self.kicked.set()
        return jid

    async def get(self, jid: str) -> dict | None:
        """The job, with the end a client or the expiry gave it (see `_end`)."""
        job = await self.jobs.find_one({"_id": jid})
        if job is None:
            return None
        end = await self.leases.find_one({"_id": f"{jid}|end"})
        if end is not None and job.get("state") != end["state"]:
            job = {k: v for k, v in job.items() if k != "principal"} | {"state": end["state"]}
            await self.jobs.update_one({"_id": jid}, {"$set": {"state": end["state"]}, "$unset": {"principal": ""}})
        return job

    async def _end(self, jid: str, state: str) -> None:
        """Record that a job ended (cancelled, expired) where no later write can undo it: a unique
        insert. On an engine whose updates are not atomic (FerretDB v1 reads, then writes the whole
        document), a worker's concurrent `claim` could write `running` back over `cancelled`; the
        end marker outlives that, and `get`/`claim` follow it."""
        with contextlib.suppress(DuplicateKeyError):
            await self.leases.insert_one({"_id": f"{jid}|end", "state": state, "at": now_ms()})

    async def claimable(self, limit: int = 10) -> list[dict]:
        """Jobs waiting for a worker: queued, or running under a lease that expired (its worker died)."""
        cursor = self.jobs.find({"state": {"$in": list(ACTIVE)}, "lease_until": {"$lte": now_ms()}},
                                sort=[("lease_until", ASCENDING)], limit=limit)
        return [d async for d in cursor]

    async def claim(self, job: dict, worker: str, lease_seconds: float) -> int | None:
        """Take the job's next lease generation (exclusive: a unique insert); None if another won."""
        gen = int(job.get("lease_gen", 0)) + 1
        try:
            await self.leases.insert_one({"_id": f"{job['_id']}|{gen}", "job": job["_id"], "worker": worker,
                                          "at": now_ms()})
        except DuplicateKeyError:
            return None
        await self.jobs.update_one({"_id": job["_id"], "state": {"$in": list(ACTIVE)}},
                                   {"$set": {"state": RUNNING, "lease_gen": gen, "worker": worker,
                                             "lease_until": now_ms() + timedelta(seconds=lease_seconds)}})
        now = await self.get(job["_id"])  # ended meanwhile (cancelled): not ours to run
        if now is None or now.get("state") != RUNNING:
            return None
        return gen

    async def renew(self, jid: str, gen: int, lease_seconds: float) -> dict | None:
        """Extend our lease; the job as it is now (None when gone). The caller stops when the state is
        no longer running or another generation took over."""
        await self.jobs.update_one({"_id": jid, "lease_gen": gen, "state": RUNNING},
                                   {"$set": {"lease_until": now_ms() + timedelta(seconds=lease_seconds)}})
        return await self.get(jid)

    async def release(self, jid: str, gen: int) -> None:
        """Give the lease back (graceful shutdown): another worker may resume the job at once."""
        await self.jobs.update_one({"_id": jid, "lease_gen": gen, "state": RUNNING},
                                   {"$set": {"lease_until": now_ms()}})

    async def finish(self, jid: str, gen: int, state: str, retention_seconds: float, **fields) -> None:
        now = now_ms()
        await self.jobs.update_one({"_id": jid, "lease_gen": gen, "state": RUNNING},
                                   {"$set": {"state": state, "finished": now,
                                             "expires": now + timedelta(seconds=retention_seconds), **fields}})

    async def cancel(self, jid: str) -> None:
        """Mark cancelled, then delete what it produced (a worker still writing notices at its next part)."""
        await self._end(jid, CANCELLED)
        await self.jobs.update_one({"_id": jid}, {"$set": {"state": CANCELLED}, "$unset": {"principal": "",
                                                                                         "expires": ""}})
        await self.purge(jid)

    async def expired(self, limit: int = 100) -> list[str]:
        cursor = self.jobs.find({"expires": {"$lte": now_ms()}, "state": {"$ne": EXPIRED}}, projection={"_id": 1},
                                limit=limit)
        return [d["_id"] async for d in cursor]

    async def expire(self, jid: str) -> None:
        """Delete the output and keep a small tombstone (its URLs then answer 410 to their owner)."""
        await self._end(jid, EXPIRED)
        await self.jobs.update_one({"_id": jid}, {"$set": {"state": EXPIRED}, "$unset": {"principal": ""}})
        await self.purge(jid)

    async def purge(self, jid: str) -> None:
        async for f in self.files.find({"metadata.job": jid}, projection={"_id": 1}):
            await self._delete_file(f["_id"])
        await self.parts.delete_many({"job": jid})
        await self.leases.delete_many({"job": jid})  # not the end marker (it has no `job` field)

    # --- parts (checkpoints) and their files ------------------------------------------------------

    async def part_list(self, jid: str) -> list[dict]:
        return [d async for d in self.parts.find({"job": jid}, sort=[("n", ASCENDING)])]

    async def part(self, jid: str, n: int) -> dict | None:
        return await self.parts.find_one({"_id": f"{jid}|{n}"})

    async def drop_orphans(self, jid: str) -> None:
        """Delete files of the job that no part records (a worker died while writing them)."""
        kept = {p["file"] for p in await self.part_list(jid)}
        async for f in self.files.find({"metadata.job": jid}, projection={"_id": 1}):
            if f["_id"] not in kept:
                await self._delete_file(f["_id"])

    def open_file(self, jid: str, n: int, rtype: str):
        """A GridFS upload stream for part `n` (write(bytes), close(), abort())."""
        return self.bucket.open_upload_stream(f"{jid}-{n}-{rtype}.ndjson", metadata={"job": jid, "n": n})

    async def record_part(self, part: dict) -> bool:
        """Record a finished part (`_id` = job|n); False when another worker recorded it first."""
        try:
            await self.parts.insert_one(part)
        except DuplicateKeyError:
            return False
        return True

    def stream_file(self, file_id: object) -> AsyncIterator[bytes]:
        return gridfs_chunks(self.bucket, file_id)

    async def _delete_file(self, file_id: object) -> None:
        try:
            await self.bucket.delete(file_id)
        except NoFile:
            pass


def lease_expired(job: dict, now: datetime | None = None) -> bool:
    return job.get("lease_until") is None or job["lease_until"] <= (now or now_ms())
