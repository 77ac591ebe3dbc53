"""The audit trail: AuditEvents stored durably, in groups, on a hash chain.

Group commit: a request hands its events to `store` and waits; one writer task per process takes
everything queued and inserts it with one `insert_many` (into the AuditEvent type's current
collection, with the search index fields, as version 1 without a history entry: an AuditEvent is
never updated, so its one version *is* its history; the repository answers vread and history
from there). While a batch is being written, the next one queues up, so under load a write
carries many requests' events and each request waits only for its own batch.

Hash chain: each process writes its own chain (`_ac`: host, process id, start instant and a
random part), numbering records from 0 (`_as`) and storing the SHA-256 of the previous record
(`_ap`) and of itself (`_ah` = SHA-256 of the chain id, the previous hash and the stored JSON). Several workers or
servers never contend for one chain head; a failed batch ends its
chain (the writer starts a new one), since part of it may have been stored. `verify` walks every
chain and names the first record altered, removed, inserted or reordered.

Received events (IHE ITI-20 "Record Audit Event": an EHR's AuditEvents POSTed by a system client
allowed to, access/audit_readers.py) join the same chains through `received`, so `$verify` covers
them; they keep the `recorded` they were sent with, and get the server's `meta.lastUpdated` (and
`_lu`), which says when this server took them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from pymongo import IndexModel

from fhir_server.storage.documents import F_ID, F_JSON, F_UPDATED, OP_CREATE, Version, aware, fhir_instant, now_ms
from fhir_server.storage.repository import Repository, ensure_indexes_of

A_CHAIN, A_SEQ, A_PREV, A_HASH = "_ac", "_as", "_ap", "_ah"
GENESIS = "0" * 64
AUDIT_TYPE = "AuditEvent"


def record_hash(chain: str, prev: str, body: bytes) -> str:
    """The order lives in the links (`prev`), not in the number, so two records swapped are told
    from one altered."""
    h = hashlib.sha256()
    h.update(f"{chain}\n{prev}\n".encode())
    h.update(body)
    return h.hexdigest()


def _new_chain() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{datetime.now().strftime('%Y%m%dT%H%M%S')}:{uuid.uuid4().hex[:8]}"


class AuditTrail:
    """Group-committed, hash-chained storage of AuditEvents."""

    def __init__(self, repo: Repository, enabled: bool = True) -> None:
        self.repo = repo
        self.enabled = enabled
        # (events, future, when the server received them: only for events it did not write itself)
        self._queue: list[tuple[list[dict], asyncio.Future, datetime | None]] = []
        self._writer: asyncio.Task | None = None
        self._chain = _new_chain()
        self._seq = 0
        self._prev = GENESIS
        self.batches = 0  # how many insert_many calls (observability, tests)

    async def ensure_indexes(self) -> None:
        await ensure_indexes_of(self.repo.db[AUDIT_TYPE], [IndexModel([(A_CHAIN, 1), (A_SEQ, 1)], name="chain", sparse=True)])

    async def store(self, events: list[dict]) -> None:
        """Persist `events`; returns once they are written (raises if they could not be)."""
        if not events or not self.enabled:
            return
        await self._enqueue(events, None)

    async def received(self, event: dict) -> Version:
        """Append an AuditEvent received from another system (it has its final `id`): stored even when
        the server's own auditing is off (it is data someone sent), `recorded` as given,
        `meta.lastUpdated` now. Returns the stored version."""
        at = now_ms()
        meta = {k: v for k, v in (event.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        event = {**{k: v for k, v in event.items() if k != "meta"}, **({"meta": meta} if meta else {})}
        await self._enqueue([event], at)
        return Version(AUDIT_TYPE, event["id"], 1, at, OP_CREATE, self.repo.stamped_json(AUDIT_TYPE, event, 1,
                                                                                          fhir_instant(at)))

    async def _enqueue(self, events: list[dict], received_at: datetime | None) -> None:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((events, fut, received_at))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await fut

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            events = [(e, at) for evs, _, at in batch for e in evs]
            docs, seq, prev = self._chained(events)
            try:
                self.batches += 1
                await self.repo.append(AUDIT_TYPE, docs)
            except BaseException as exc:
                self._chain, self._seq, self._prev = _new_chain(), 0, GENESIS  # part may be stored
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            self._seq, self._prev = seq, prev
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_result(None)

    def _chained(self, events: list[tuple[dict, datetime | None]]) -> tuple[list[tuple[dict, dict]], int, str]:
        seq, prev = self._seq, self._prev
        out = []
        for e, received_at in events:
            body = self.repo.stamped_json(AUDIT_TYPE, e, 1, fhir_instant(received_at) if received_at else e["recorded"])
            digest = record_hash(self._chain, prev, body)
            fields = {A_CHAIN: self._chain, A_SEQ: seq, A_PREV: prev, A_HASH: digest, F_JSON: body}
            if received_at is not None:
                fields[F_UPDATED] = received_at  # when we took it, not when the sender recorded it
            out.append((e, fields))
            prev, seq = digest, seq + 1
        return out, seq, prev


async def verify(repo: Repository) -> tuple[list[dict], int]:
    """Check every chain: (findings, chains checked), one finding per broken chain: {chain, seq,
    id, problem, detail}, where problem is altered | removed | inserted | reordered."""
    findings, chains = [], 0
    async for chain, records in _chains(repo):
        chains += 1
        problem = _first_problem(chain, records)
        if problem is not None:
            findings.append(problem)
    return findings, chains


async def _chains(repo: Repository) -> AsyncIterator[tuple[str, list[dict]]]:
    coll = repo.db[AUDIT_TYPE]
    names = sorted(c for c in await coll.distinct(A_CHAIN) if isinstance(c, str))
    for chain in names:
        records = [d async for d in coll.find({A_CHAIN: chain}, projection={F_ID: 1, A_SEQ: 1, A_PREV: 1,
                                                                          A_HASH: 1, F_JSON: 1, F_UPDATED: 1},
                                              sort=[(A_SEQ, 1), (F_ID, 1)])]
        yield chain, records


def _first_problem(chain: str, records: list[dict]) -> dict | None:
    hashes = {r.get(A_HASH) for r in records}
    expected_seq, prev = 0, GENESIS
    for r in records:
        seq = r.get(A_SEQ)

        def finding(problem: str, detail: str, r=r, seq=seq) -> dict:
            return {"chain": chain, "seq": seq, "id": r.get(F_ID), "problem": problem, "detail": detail}

        own = record_hash(chain, str(r.get(A_PREV, "")), r.get(F_JSON) or b"")
        if seq != expected_seq:
            if isinstance(seq, int) and seq < expected_seq:
                return finding("inserted", f"a second record numbered {seq}")
            return finding("removed", f"record {expected_seq} is missing (the next one found is {seq})")
        if own != r.get(A_HASH):
            return finding("altered", "its content no longer matches its hash")
        if r.get(A_PREV) != prev:
            if r.get(A_PREV) in hashes:
                return finding("reordered", "its predecessor is another record of the chain")
            return finding("inserted", "it does not follow the record before it")
        prev, expected_seq = r[A_HASH], expected_seq + 1
    return None


def recorded_at(doc: dict) -> datetime:
    return aware(doc[F_UPDATED])
