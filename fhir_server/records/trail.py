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

Links alone cannot see the *end* of a chain cut off (its last records deleted: what remains still
links up). So each chain's head (last sequence number and hash) is also kept in `_audit_heads`,
written by a background task at most every `HEAD_INTERVAL` seconds (always the newest head: one
small write per interval, not one per batch) and flushed at shutdown; `verify` compares each
chain with its head and reports records missing at the end, or a whole chain gone. A crash can
leave the head up to one interval behind (the records of that last interval are then not
covered), never ahead. Deleting a chain *and* its head together is not detected here: export the
heads to a write-once store (a log shipper) to close that gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from pymongo import IndexModel

from fhir_server.storage.documents import F_ID, F_JSON, F_UPDATED, aware
from fhir_server.storage.repository import Repository, ensure_indexes_of

log = logging.getLogger(__name__)

A_CHAIN, A_SEQ, A_PREV, A_HASH = "_ac", "_as", "_ap", "_ah"
HEADS = "_audit_heads"  # {_id: chain, seq: last sequence number, hash: its hash}
HEAD_INTERVAL = 1.0  # seconds between two writes of a chain's head
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
        self._queue: list[tuple[list[dict], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._chain = _new_chain()
        self._seq = 0
        self._prev = GENESIS
        self.batches = 0  # how many insert_many calls (observability, tests)
        self._head: tuple[str, int, str] | None = None  # the newest head not yet written
        self._head_writer: asyncio.Task | None = None
        self._closing: asyncio.Event | None = None

    async def ensure_indexes(self) -> None:
        await ensure_indexes_of(self.repo.db[AUDIT_TYPE], [IndexModel([(A_CHAIN, 1), (A_SEQ, 1)], name="chain", sparse=True)])

    async def store(self, events: list[dict]) -> None:
        """Persist `events`; returns once they are written (raises if they could not be)."""
        if not events or not self.enabled:
            return
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((events, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await fut

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            events = [e for evs, _ in batch for e in evs]
            docs, seq, prev = self._chained(events)
            try:
                self.batches += 1
                await self.repo.append(AUDIT_TYPE, docs)
            except BaseException as exc:
                self._chain, self._seq, self._prev = _new_chain(), 0, GENESIS  # part may be stored
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            self._seq, self._prev = seq, prev
            self._head = (self._chain, seq - 1, prev)
            if self._head_writer is None or self._head_writer.done():
                self._head_writer = asyncio.create_task(self._write_heads())
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def _write_heads(self) -> None:
        if self._closing is None:
            self._closing = asyncio.Event()
        while self._head is not None:
            (chain, seq, digest), self._head = self._head, None
            try:
                await self.repo.db[HEADS].replace_one({"_id": chain}, {"_id": chain, "seq": seq, "hash": digest},
                                                      upsert=True)
            except Exception:  # the records are stored; the next write carries a newer head
                log.warning("audit chain head not written", exc_info=True)
            if not self._closing.is_set():  # let the batches of the next interval share one head write
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), HEAD_INTERVAL)

    async def close(self) -> None:
        """Let the queued events and the last head reach the database (at shutdown)."""
        if self._closing is None:
            self._closing = asyncio.Event()
        self._closing.set()
        for task in (self._writer, self._head_writer):
            if task is not None and not task.done():
                with contextlib.suppress(Exception):
                    await task
        if self._head is not None:
            await self._write_heads()

    def _chained(self, events: list[dict]) -> tuple[list[tuple[dict, dict]], int, str]:
        seq, prev = self._seq, self._prev
        out = []
        for e in events:
            body = self.repo.stamped_json(AUDIT_TYPE, e, 1, e["recorded"])
            digest = record_hash(self._chain, prev, body)
            out.append((e, {A_CHAIN: self._chain, A_SEQ: seq, A_PREV: prev, A_HASH: digest, F_JSON: body}))
            prev, seq = digest, seq + 1
        return out, seq, prev


async def verify(repo: Repository) -> tuple[list[dict], int]:
    """Check every chain: (findings, chains checked), one finding per broken chain: {chain, seq,
    id, problem, detail}, where problem is altered | removed | inserted | reordered."""
    findings, chains = [], 0
    heads = {h["_id"]: h async for h in repo.db[HEADS].find({})}
    async for chain, records in _chains(repo):
        chains += 1
        head = heads.pop(chain, None)
        problem = _first_problem(chain, records) or _cut_off(chain, records, head)
        if problem is not None:
            findings.append(problem)
    for chain, head in sorted(heads.items()):  # a chain whose every record is gone
        chains += 1
        findings.append({"chain": chain, "seq": 0, "id": None, "problem": "removed",
                         "detail": f"records 0 to {head['seq']} are missing: the whole chain is gone"})
    return findings, chains


def _cut_off(chain: str, records: list[dict], head: dict | None) -> dict | None:
    """Records deleted at the end of an otherwise sound chain, seen against its recorded head."""
    if head is None or not isinstance(head.get("seq"), int):
        return None
    last = len(records) - 1
    if head["seq"] > last:
        return {"chain": chain, "seq": last + 1, "id": None, "problem": "removed",
                "detail": f"records {last + 1} to {head['seq']} are missing at the end of the chain"}
    if records[head["seq"]].get(A_HASH) != head.get("hash"):
        r = records[head["seq"]]
        return {"chain": chain, "seq": head["seq"], "id": r.get(F_ID), "problem": "altered",
                "detail": "it is not the record the chain's head names"}
    return None


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
