"""The audit trail: AuditEvents stored durably, in groups, on a hash chain.

Group commit: a request hands its events to `store` and waits; one writer task per process takes
everything queued and inserts it with one `insert_many` (into the AuditEvent type's current
collection, with the search index fields, as version 1 without a history entry: an AuditEvent is
never updated, so its one version *is* its history; the repository answers vread and history
from there). While a batch is being written, the next one queues up, so under load a write
carries many requests' events and each request waits only for its own batch. A batch is fair:
requests with few events (a read has one) go whole into the next insert, and the events of large
ones (a refused 1000-entry Bundle has 1001) are written at most `BATCH_EVENTS` per insert, so a
read waits behind a slice of a flood's events, not all of them (bench/hostile.py).

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

Received events (IHE ITI-20 "Record Audit Event": an EHR's AuditEvents POSTed by a system client
allowed to, access/audit_readers.py) join the same chains through `received`, so `$verify` covers
them; they keep the `recorded` they were sent with, and get the server's `meta.lastUpdated` (and
`_lu`), which says when this server took them.

Retention (`FHIR_AUDIT_RETENTION_DAYS`, unset: forever): `purge` deletes, per chain, the records
older than the limit — always a *prefix* of the chain — and first records, for each chain, a
checkpoint "records before N are pruned; record N follows hash H". The checkpoints are written twice:
inside an AuditEvent appended to the trail (DICOM 110101 "Audit Log Used", action D), so they are
hash-protected like any record, and in `audit_checkpoints`, where `verify` finds them; `verify`
checks the two agree and starts each pruned chain at its checkpoint. Deleting records without a
checkpoint, or editing the checkpoint, is still reported.
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
from dataclasses import dataclass
from datetime import datetime

import orjson
from pymongo import IndexModel

from fhir_server.storage.documents import F_ID, F_JSON, F_UPDATED, OP_CREATE, Version, aware, fhir_instant, now_ms
from fhir_server.storage.repository import Repository, ensure_indexes_of

log = logging.getLogger(__name__)

A_CHAIN, A_SEQ, A_PREV, A_HASH = "_ac", "_as", "_ap", "_ah"
HEADS = "_audit_heads"  # {_id: chain, seq: last sequence number, hash: its hash}
HEAD_INTERVAL = 1.0  # seconds between two writes of a chain's head
BATCH_EVENTS = 16  # events of large requests per insert (FerretDB takes ~0.25 ms per event)
SMALL_EVENTS = 8  # a request with at most this many events goes whole into the next insert
GENESIS = "0" * 64
AUDIT_TYPE = "AuditEvent"
CHECKPOINTS = "audit_checkpoints"
PRUNED = "pruned"  # the _id of the one checkpoint document, and the entity detail type of each chain's
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def record_hash(chain: str, prev: str, body: bytes) -> str:
    """The order lives in the links (`prev`), not in the number, so two records swapped are told
    from one altered."""
    h = hashlib.sha256()
    h.update(f"{chain}\n{prev}\n".encode())
    h.update(body)
    return h.hexdigest()


def _new_chain() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{datetime.now().strftime('%Y%m%dT%H%M%S')}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True, eq=False)
class _Pending:
    """A request's events waiting for the writer, and how many of them are stored."""

    events: list[dict]
    done: asyncio.Future
    received_at: datetime | None  # when the server received them: only for events it did not write itself
    written: int = 0

    @property
    def left(self) -> int:
        return len(self.events) - self.written


class AuditTrail:
    """Group-committed, hash-chained storage of AuditEvents."""

    def __init__(self, repo: Repository, enabled: bool = True) -> None:
        self.repo = repo
        self.enabled = enabled
        self._queue: list[_Pending] = []
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
        pending = _Pending(events, asyncio.get_running_loop().create_future(), received_at)
        self._queue.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await pending.done

    def _next_batch(self) -> list[tuple[_Pending, int]]:
        """What the next insert carries: (request, how many of its events). Small requests whole,
        then slices of large ones in arrival order up to BATCH_EVENTS events in all."""
        batch = [(p, p.left) for p in self._queue if p.left <= SMALL_EVENTS]
        # at least SMALL_EVENTS for the large ones, so that a steady stream of reads cannot starve them
        budget = max(SMALL_EVENTS, BATCH_EVENTS - sum(n for _, n in batch))
        for p in self._queue:
            if p.left > SMALL_EVENTS and budget > 0:
                batch.append((p, min(p.left, budget)))
                budget -= batch[-1][1]
        return batch

    async def _write(self) -> None:
        while self._queue:
            batch = self._next_batch()
            events = [(e, p.received_at) for p, n in batch for e in p.events[p.written:p.written + n]]
            docs, seq, prev = self._chained(events)
            try:
                self.batches += 1
                await self.repo.append(AUDIT_TYPE, docs)
            except BaseException as exc:
                self._chain, self._seq, self._prev = _new_chain(), 0, GENESIS  # part may be stored
                failed = {id(p) for p, _ in batch}
                self._queue = [p for p in self._queue if id(p) not in failed]
                for p, _ in batch:
                    if not p.done.done():
                        p.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            self._seq, self._prev = seq, prev
            for p, n in batch:
                p.written += n
            self._queue = [p for p in self._queue if p.left]
            self._head = (self._chain, seq - 1, prev)
            if self._head_writer is None or self._head_writer.done():
                self._head_writer = asyncio.create_task(self._write_heads())
            for p, _ in batch:
                if not p.left and not p.done.done():
                    p.done.set_result(None)

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
    starts, problem = await _checkpoints(repo)
    if problem is not None:
        findings.append(problem)
    heads = {h["_id"]: h async for h in repo.db[HEADS].find({})}
    async for chain, records in _chains(repo):
        chains += 1
        head = heads.pop(chain, None)
        problem = _first_problem(chain, records, starts.get(chain)) or _cut_off(chain, records, head,
                                                                               starts.get(chain))
        if problem is not None:
            findings.append(problem)
    for chain, head in sorted(heads.items()):  # a chain whose every record is gone
        start = starts.get(chain)
        if start is not None and start[0] > head["seq"]:
            continue  # pruned whole by the retention, with its checkpoint
        chains += 1
        findings.append({"chain": chain, "seq": 0, "id": None, "problem": "removed",
                         "detail": f"records 0 to {head['seq']} are missing: the whole chain is gone"})
    return findings, chains


def _cut_off(chain: str, records: list[dict], head: dict | None, start: tuple[int, str] | None) -> dict | None:
    """Records deleted at the end of an otherwise sound chain, seen against its recorded head."""
    if head is None or not isinstance(head.get("seq"), int):
        return None
    last = records[-1].get(A_SEQ) if records else (start[0] - 1 if start else -1)
    if not isinstance(last, int):
        return None
    if head["seq"] > last:
        return {"chain": chain, "seq": last + 1, "id": None, "problem": "removed",
                "detail": f"records {last + 1} to {head['seq']} are missing at the end of the chain"}
    named = next((r for r in records if r.get(A_SEQ) == head["seq"]), None)
    if named is not None and named.get(A_HASH) != head.get("hash"):
        return {"chain": chain, "seq": head["seq"], "id": named.get(F_ID), "problem": "altered",
                "detail": "it is not the record the chain's head names"}
    return None


def _details(chains: dict[str, tuple[int, str]]) -> list[dict]:
    return [{"type": PRUNED, "valueString": f"{chain} {seq} {prev}"} for chain, (seq, prev) in sorted(chains.items())]


async def _checkpoints(repo: Repository) -> tuple[dict[str, tuple[int, str]], dict | None]:
    """The chains' pruning checkpoints, if they agree with the hash-chained AuditEvent that recorded
    them (else a finding, and no checkpoint is trusted)."""
    doc = await repo.db[CHECKPOINTS].find_one({F_ID: PRUNED})
    if doc is None:
        return {}, None
    chains = {c: (int(v[0]), str(v[1])) for c, v in (doc.get("chains") or {}).items()}
    event = await repo.db[AUDIT_TYPE].find_one({F_ID: doc.get("event")}, projection={F_JSON: 1})
    recorded = None
    if event is not None:
        body = orjson.loads(event.get(F_JSON) or b"{}")
        recorded = [d for e in body.get("entity") or () for d in e.get("detail") or () if d.get("type") == PRUNED]
    if recorded != _details(chains):
        return {}, {"chain": "-", "seq": "-", "id": doc.get("event"), "problem": "altered",
                    "detail": "the pruning checkpoints differ from the audit event that recorded them"}
    return chains, None


async def purge(trail: AuditTrail, cutoff: datetime, *, dry_run: bool = False) -> dict[str, int]:
    """Delete the records older than `cutoff`, chain by chain (a prefix of each), after recording the
    checkpoints that let `verify` start where the records now start. {chain: records deleted}."""
    repo = trail.repo
    coll = repo.db[AUDIT_TYPE]
    old = (await repo.db[CHECKPOINTS].find_one({F_ID: PRUNED})) or {}
    chains = {c: (int(v[0]), str(v[1])) for c, v in (old.get("chains") or {}).items()}
    plan: dict[str, int] = {}
    for chain in sorted(c for c in await coll.distinct(A_CHAIN) if isinstance(c, str)):
        first = await coll.find_one({A_CHAIN: chain}, sort=[(A_SEQ, 1)], projection={A_SEQ: 1})
        keep = await coll.find_one({A_CHAIN: chain, F_UPDATED: {"$gte": cutoff}}, sort=[(A_SEQ, 1)],
                                   projection={A_SEQ: 1})
        if keep is None:  # all of it is old: the checkpoint follows its last record
            last = await coll.find_one({A_CHAIN: chain}, sort=[(A_SEQ, -1)], projection={A_SEQ: 1, A_HASH: 1})
            assert last is not None
            upto, prev = last[A_SEQ] + 1, last[A_HASH]
        else:
            upto = keep[A_SEQ]
            before = await coll.find_one({A_CHAIN: chain, A_SEQ: upto - 1}, projection={A_HASH: 1})
            if before is None:
                continue  # nothing older left in this chain
            prev = before[A_HASH]
        if first is None or upto <= first[A_SEQ]:
            continue
        chains[chain] = (upto, prev)
        plan[chain] = await coll.count_documents({A_CHAIN: chain, A_SEQ: {"$lt": upto}})
    if dry_run or not plan:
        return plan
    event = {"resourceType": AUDIT_TYPE, "id": str(uuid.uuid4()),
             "type": {"system": DCM, "code": "110101", "display": "Audit Log Used"}, "action": "D",
             "recorded": fhir_instant(now_ms()), "outcome": "0",
             "outcomeDesc": f"retention: {sum(plan.values())} audit records before {fhir_instant(cutoff)} deleted",
             "agent": [{"who": {"display": "fhir-server audit purge"}, "requestor": True}],
             "source": {"observer": {"display": "fhir-server"}},
             "entity": [{"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                         "name": "audit trail checkpoints", "detail": _details(chains)}]}
    await trail.store([event])  # the checkpoints, hash-protected, before anything is deleted
    await repo.db[CHECKPOINTS].replace_one({F_ID: PRUNED}, {F_ID: PRUNED, "chains": {
        c: [seq, prev] for c, (seq, prev) in chains.items()}, "event": event["id"]}, upsert=True)
    for chain, (upto, _) in chains.items():
        if chain in plan:
            await coll.delete_many({A_CHAIN: chain, A_SEQ: {"$lt": upto}})
    return plan


async def _chains(repo: Repository) -> AsyncIterator[tuple[str, list[dict]]]:
    coll = repo.db[AUDIT_TYPE]
    names = sorted(c for c in await coll.distinct(A_CHAIN) if isinstance(c, str))
    for chain in names:
        records = [d async for d in coll.find({A_CHAIN: chain}, projection={F_ID: 1, A_SEQ: 1, A_PREV: 1,
                                                                          A_HASH: 1, F_JSON: 1, F_UPDATED: 1},
                                              sort=[(A_SEQ, 1), (F_ID, 1)])]
        yield chain, records


def _first_problem(chain: str, records: list[dict], start: tuple[int, str] | None = None) -> dict | None:
    """The first problem of one chain. `start`: its pruning checkpoint (records before seq N were
    deleted; record N follows hash H); records before N still present (a purge interrupted) are
    checked among themselves and must lead to H."""
    hashes = {r.get(A_HASH) for r in records}
    expected_seq, prev = 0, GENESIS
    if start is not None and records:
        first = records[0].get(A_SEQ)
        if isinstance(first, int) and first < start[0]:
            expected_seq, prev = first, str(records[0].get(A_PREV, ""))
        else:
            expected_seq, prev = start
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
        if start is not None and seq == start[0] and r.get(A_PREV) != start[1]:
            return finding("inserted", "it does not follow the pruning checkpoint")
        if r.get(A_PREV) != prev:
            if r.get(A_PREV) in hashes:
                return finding("reordered", "its predecessor is another record of the chain")
            return finding("inserted", "it does not follow the record before it")
        prev, expected_seq = r[A_HASH], expected_seq + 1
    return None


def recorded_at(doc: dict) -> datetime:
    return aware(doc[F_UPDATED])
