"""The resource repository: versioned writes, reads and history on MongoDB. Knows nothing of HTTP.

Write protocol (no multi-document transaction needed, so it works on FerretDB v1 and sharded
MongoDB alike): a write first inserts the new version into the history collection under the
unique `_id` "id/version". That insert is the lock: of two concurrent writers building on the
same version, exactly one wins, the other gets a duplicate key and retries on top of the winner
(or answers 412 when the client sent If-Match). The winner then applies the version to the
current collection with an idempotent, version-guarded replace. If a writer dies between the two
steps, the next writer finds the orphan history version and rolls it forward before going on.
Inside a unit of work (transaction Bundles) the same steps run in a MongoDB transaction, or, on an
engine without one, under the application-level commit protocol of storage/transactions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhir_server.fhir import offload
from fhir_server.fhir.outcome import FhirError
from fhir_server.storage import keyset
from fhir_server.storage.binaries import BinaryStore
from fhir_server.storage.destruction import MARKERS, marker_id
from fhir_server.storage.documents import (
    F_BINARY,
    F_BINARY_SHARED,
    F_BINARY_SIZE,
    F_ID,
    F_JSON,
    F_UPDATED,
    F_VERSION,
    H_OP,
    H_RESOURCE_ID,
    OP_CREATE,
    OP_DELETE,
    OP_UPDATE,
    Version,
    aware,
    fhir_instant,
    history_collection,
    history_id,
    now_ms,
)
from fhir_server.storage.exports import ExportStore
from fhir_server.storage.grouped import GroupedInserts
from fhir_server.storage.indexes import ensure_indexes_of
from fhir_server.storage.transactions import COMMITTED, H_TX, AppTransaction, recover, settle
from fhir_server.storage.unique import UniqueKeys

MAX_WRITE_ATTEMPTS = 64
# types whose server-written records are stored once (no history entry): the audit trail (`append`)
# and the Provenance of each write (projected from the history version it was written in)
APPEND_ONLY = frozenset({"AuditEvent", "Provenance"})
PROVENANCE = "Provenance"
H_PROVENANCE = "_pv"  # on a history version: the stored JSON of the Provenance of that write
_PROVENANCE_IDS = uuid.UUID("5d0f3c52-9a4b-4f7e-8a51-7c2b1e0d9f63")  # uuid5 namespace of Provenance ids
MAX_SPLIT = 1001  # ids looked up one by one where the engine cannot use an index for `$in`


class NoTransactions(Exception):
    """An atomic unit of work was asked of an engine without multi-document transactions."""


@dataclass(slots=True)
class Unit:
    """An open unit of work, passed to every repository call that belongs to it: a MongoDB session
    in a native transaction, or the application-level transaction (storage/transactions.py)."""

    session: AsyncClientSession | None = None
    tx: AppTransaction | None = None
    claims: list[tuple[str, str]] = field(default_factory=list)  # unique keys claimed: released on rollback


def _s(unit: Unit | None) -> AsyncClientSession | None:
    return unit.session if unit is not None else None


def _tx(unit: Unit | None) -> AppTransaction | None:
    return unit.tx if unit is not None else None
IndexFields = Callable[[dict], dict]
IndexSpecs = Callable[[str], list[IndexModel]]
UniqueKeysOf = Callable[[str, dict], list[str]]
# (version, op, recorded) -> the Provenance resource of that write (records/provenance.py builds it)
ProvenanceOf = Callable[[int, str, datetime], dict]


def provenance_id(rtype: str, rid: str, version: int) -> str:
    """The id of the Provenance of one version: derived from the version, so projecting it again
    (a roll-forward after a crash) finds the one already there instead of making a second."""
    return str(uuid.uuid5(_PROVENANCE_IDS, f"{rtype}/{history_id(rid, version)}"))


def _no_index_fields(resource: dict) -> dict:
    return {}


def _no_index_specs(rtype: str) -> list[IndexModel]:
    return []


def _no_unique_keys(rtype: str, resource: dict) -> list[str]:
    return []


def flatten(flt: dict) -> dict:
    """The same filter with the field conditions of `$and` parts lifted to the top level.

    MongoDB plans either form alike; FerretDB v1 pushes down to SQL (and so to indexes) only
    top-level field conditions, and the access decision arrives as `{"$and": [criteria, access]}`
    (docs/mongodb-compat.md). Conjunction is unchanged: a key already present, and every `$`
    operator, stays inside a remaining `$and`."""
    if "$and" not in flt:
        return flt
    out = {k: v for k, v in flt.items() if k != "$and"}
    rest = []
    for part in flt["$and"]:
        part = flatten(part) if isinstance(part, dict) else part
        if not isinstance(part, dict):
            rest.append(part)
            continue
        for k, v in part.items():
            if k.startswith("$") or k in out:
                rest.append({k: v})
            else:
                out[k] = v
    if rest:
        out["$and"] = rest
    return out


class Repository:
    def __init__(
        self,
        client: AsyncMongoClient,
        db: AsyncDatabase,
        types: tuple[str, ...],
        binaries: BinaryStore,
        index_fields: IndexFields = _no_index_fields,
        index_specs: IndexSpecs = _no_index_specs,
        transactions: bool = False,
        crash_after: int | None = None,
        in_pushdown: bool = True,
        unique_keys: UniqueKeysOf = _no_unique_keys,
        atomic_updates: bool = True,
    ) -> None:
        self.atomic_updates = atomic_updates  # False: a guarded replace may be overtaken (FerretDB v1)
        self.in_pushdown = in_pushdown  # False: the engine scans for `$in` (FerretDB v1), split it
        self.client = client
        self.transactions = transactions
        self.crash_after = crash_after  # tests only: os._exit at the N-th write or commit step
        self._steps = 0
        self.db = db
        self.types = types
        self.binaries = binaries
        self._index_fields = index_fields
        self._index_specs = index_specs
        self._unique_keys = unique_keys
        self.uniques = UniqueKeys(db)
        self.exports = ExportStore(db)  # bulk export jobs and their files (storage/exports.py)
        self._current = {t: db[t] for t in types}
        self._history = {t: db[history_collection(t)] for t in types}
        # concurrent writes' Provenance projections share one insert_many (storage/grouped.py)
        self.provenance_inserts = GroupedInserts(self._current[PROVENANCE]) if PROVENANCE in self._current else None

    async def ensure_indexes(self) -> None:
        """Create the indexes that are missing; safe to run at every start-up."""
        for t in self.types:
            await ensure_indexes_of(self._history[t], [
                IndexModel([(H_RESOURCE_ID, ASCENDING), (F_VERSION, DESCENDING)], name="rid_v"),
                IndexModel([(F_UPDATED, DESCENDING), (F_ID, DESCENDING)], name="lu_id"),
                IndexModel([(H_TX, ASCENDING)], name="tx", sparse=True),
            ])
            await ensure_indexes_of(self._current[t], [IndexModel([(F_UPDATED, DESCENDING), (F_ID, DESCENDING)], name="lu_id"),
                                             *self._index_specs(t)])
        await self.binaries.ensure_indexes()
        await self.exports.ensure_indexes()

    # ---- units of work ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def unit(self, *, atomic: bool = True) -> AsyncIterator[Unit]:
        """A unit of work, committed when the block ends and rolled back if it raises.

        Native MongoDB multi-document transaction where the engine has them; elsewhere the
        application-level commit protocol of storage/transactions.py. `atomic=False` accepts
        independent writes (each atomic on its own) where the engine has no transactions."""
        unit = Unit()
        try:
            if self.transactions:
                async with self.client.start_session() as session:
                    async with await session.start_transaction():
                        unit.session = session
                        yield unit
                return
            if not atomic:
                yield unit
                return
            tx = AppTransaction(self)
            await tx.begin()
            unit.tx = tx
            try:
                yield unit
            except BaseException:
                await tx.abort()
                raise
            await tx.commit()
        except BaseException:
            for key, owner in unit.claims:  # what the rolled-back writes claimed is free again
                await self.uniques.release([key], owner)
            raise

    async def recover(self) -> int:
        """Finish what crashed transactions left (start-up): roll committed ones forward, roll
        abandoned ones back. Returns how many were settled."""
        return await recover(self)

    # ---- reads -------------------------------------------------------------------------------

    async def read(self, rtype: str, rid: str, unit: Unit | None = None) -> Version | None:
        tx = _tx(unit)
        if tx is not None and (rtype, rid) in tx.writes:  # this transaction's own write
            hist = tx.writes[(rtype, rid)][0]
            return None if hist[H_OP] == OP_DELETE else Version.from_history(rtype, hist)
        doc = await self._current[rtype].find_one({F_ID: rid}, session=_s(unit))
        return Version.from_current(rtype, doc) if doc is not None else None

    async def latest(self, rtype: str, rid: str, unit: Unit | None = None) -> Version | None:
        """The newest version in history (a tombstone for a deleted resource), or None if never seen."""
        tx = _tx(unit)
        if tx is not None and (rtype, rid) in tx.writes:
            return Version.from_history(rtype, tx.writes[(rtype, rid)][0])
        doc = await self._history[rtype].find_one(
            {H_RESOURCE_ID: rid, **COMMITTED}, sort=[(F_VERSION, DESCENDING)], session=_s(unit)
        )
        if doc is None and rtype in APPEND_ONLY:
            return await self._appended(rtype, rid)
        if doc is None:
            return await self.destroyed(rtype, rid)
        return Version.from_history(rtype, doc) if doc is not None else None

    async def destroyed(self, rtype: str, rid: str) -> Version | None:
        """The marker of a resource removed by a record's destruction (storage/destruction.py): a
        deletion at its last version number, without content, so it answers 410 and a later write
        with the same id does not restart at version 1."""
        doc = await self.db[MARKERS].find_one({F_ID: marker_id(rtype, rid)})
        if doc is None:
            return None
        return Version(rtype, rid, doc["v"], aware(doc["at"]), OP_DELETE, None)

    async def vread(self, rtype: str, rid: str, version: int, unit: Unit | None = None
                    ) -> Version | None:
        hid = history_id(rid, version)
        tx = _tx(unit)
        if tx is not None and (rtype, rid) in tx.writes and tx.writes[(rtype, rid)][0][F_ID] == hid:
            return Version.from_history(rtype, tx.writes[(rtype, rid)][0])
        doc = await self._history[rtype].find_one({F_ID: hid, **COMMITTED}, session=_s(unit))
        if doc is None and version == 1 and rtype in APPEND_ONLY:
            return await self._appended(rtype, rid)
        return Version.from_history(rtype, doc) if doc is not None else None

    async def _appended(self, rtype: str, rid: str) -> Version | None:
        """A write-once record stored by `append` (its current document is its only version)."""
        doc = await self._current[rtype].find_one({F_ID: rid, F_VERSION: 1})
        if doc is None:
            return None
        v = Version.from_current(rtype, doc)
        v.op = OP_CREATE
        return v

    def stamped_json(self, rtype: str, resource: dict, version: int, last_updated: str) -> bytes:
        """The JSON a write-once record is stored and served as (resourceType, id, meta first)."""
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = last_updated
        stamped = {"resourceType": rtype, "id": resource["id"], "meta": meta}
        stamped.update((k, v) for k, v in resource.items() if k not in stamped)
        return orjson.dumps(stamped)

    async def relabel_appended(self, rtype: str, flt: dict, relabel, unit: Unit | None = None) -> int:
        """Rewrite the labels of write-once records the server made (a document's Provenances when
        the patient masks it): `relabel` takes a resource and returns it with its new
        `meta.security`; the stored JSON and the search index fields follow. Returns how many
        changed. Only for write-once types: their one version has no history to keep in step."""
        assert rtype in APPEND_ONLY, rtype
        coll = self._current[rtype]
        changed = 0
        async for d in coll.find(flatten(flt), projection={F_ID: 1, F_JSON: 1, F_VERSION: 1}, session=_s(unit)):
            old = orjson.loads(d[F_JSON])
            new = relabel(old)
            if new == old:
                continue
            meta = old.get("meta") or {}
            body = self.stamped_json(rtype, new, int(d.get(F_VERSION) or 1), meta.get("lastUpdated") or "")
            before, after = self._index_fields(old), self._index_fields(new)
            update: dict = {"$set": {F_JSON: body, **after}}
            gone = [k for k in before if k not in after]
            if gone:
                update["$unset"] = {k: "" for k in gone}
            await coll.update_one({F_ID: d[F_ID]}, update, session=_s(unit))
            changed += 1
        return changed

    async def append(self, rtype: str, records: list[tuple[dict, dict]]) -> None:
        """Insert write-once records (the audit trail) with one `insert_many`: version 1, no
        history entry, the search index fields of the resource. `records` are (resource, fields),
        where fields hold the stored JSON (`_json`, see `stamped_json`) and any of our own fields."""
        docs = []
        for i, (resource, fields) in enumerate(records):
            if i:  # an event's index fields take ~0.5 ms: other requests run between two
                await asyncio.sleep(0)
            doc = {F_ID: resource["id"], F_VERSION: 1, F_UPDATED: datetime.fromisoformat(resource["recorded"]), **fields}
            doc.update(self._index_fields(resource))
            docs.append(doc)
        if docs:
            await self._current[rtype].insert_many(docs, ordered=True)

    async def history(
        self,
        rtype: str,
        *,
        rid: str | None = None,
        since: datetime | None = None,
        before: tuple[datetime, str] | None = None,
        count: int,
        unit: Unit | None = None,
    ) -> list[Version]:
        """Versions newest first; `before` is the (lastUpdated, history _id) keyset cursor."""
        query: dict = dict(COMMITTED)
        if rid is not None:
            query[H_RESOURCE_ID] = rid
        if since is not None:
            query[F_UPDATED] = {"$gte": since}
        if before is not None:
            lu, hid = before
            query["$or"] = [{F_UPDATED: {"$lt": lu}}, {F_UPDATED: lu, F_ID: {"$lt": hid}}]
        sort = [(F_UPDATED, DESCENDING), (F_ID, DESCENDING)]
        cursor = self._history[rtype].find(query, sort=sort, limit=count, session=_s(unit))
        found = [Version.from_history(rtype, d) async for d in cursor]
        tx = _tx(unit)
        if tx is not None:  # this transaction's own versions, under the same conditions
            mine = [Version.from_history(rtype, h) for (t, r), (h, _) in tx.writes.items()
                    if t == rtype and (rid is None or r == rid) and (since is None or h[F_UPDATED] >= since)
                    and (before is None or (h[F_UPDATED], h[F_ID]) < before)]
            if mine:
                key = lambda v: (v.last_updated, history_id(v.id, v.version))  # noqa: E731
                found = sorted(found + mine, key=key, reverse=True)[:count]
        return found

    async def find_page(
        self, rtype: str, flt: dict, sort: list[tuple[str, int]], limit: int, after: list | None = None,
        docs: dict | None = None, unit: Unit | None = None,
    ) -> list[tuple[Version, list]]:
        """One page of a search: (version, keyset position) pairs in `sort` order (storage/keyset.py).

        `docs`, when given, receives each raw document (with its index fields) under (type, id), so
        _include can follow references without reading the page again."""
        if after is not None:
            flt = {"$and": [flt, keyset.after(sort, after)]} if flt else keyset.after(sort, after)
        cursor = self._current[rtype].find(flatten(flt), sort=sort, limit=limit, session=_s(unit))
        out = []
        async for d in cursor:
            if docs is not None:
                docs[(rtype, d[F_ID])] = d
            out.append((Version.from_current(rtype, d), keyset.position(d, sort)))
        return out

    async def find_docs(self, rtype: str, flt: dict, limit: int, unit: Unit | None = None
                        ) -> list[tuple[Version, dict]]:
        """Matching current versions with their index fields (for _include/_revinclude)."""
        flt = flatten(flt)
        ids = flt.get(F_ID, {}).get("$in") if isinstance(flt.get(F_ID), dict) and len(flt[F_ID]) == 1 else None
        if ids is not None and not self.in_pushdown and len(ids) <= MAX_SPLIT:
            # FerretDB v1 does not push `$in` down: one indexed equality per id instead of a scan
            out = []
            for rid in sorted(set(ids))[:limit]:
                doc = await self._current[rtype].find_one({**flt, F_ID: rid}, session=_s(unit))
                if doc is not None:
                    out.append((Version.from_current(rtype, doc), doc))
            return out
        cursor = self._current[rtype].find(flt, sort=[(F_ID, ASCENDING)], limit=limit, session=_s(unit))
        return [(Version.from_current(rtype, d), d) async for d in cursor]

    async def find_values(self, rtype: str, flt: dict, field: str, limit: int,
                          unit: Unit | None = None) -> list:
        """Distinct values of `field` (arrays flattened) over matching current versions (chains, _has)."""
        out: dict = {}
        cursor = self._current[rtype].find(flatten(flt), projection={field: 1}, limit=limit, session=_s(unit))
        async for doc in cursor:
            for value in keyset.values(doc, field):
                out[value] = None
        return list(out)

    async def count(self, rtype: str, flt: dict, unit: Unit | None = None) -> int:
        return await self._current[rtype].count_documents(flatten(flt), session=_s(unit))

    async def reindex(self, rtype: str, batch: int = 500, conflicts: list[str] | None = None) -> int:
        """Recompute the search index fields of every current version (after search definitions
        change), and claim each one's unique keys (an INS written before uniqueness was enforced).
        Each document is replaced only if still at the version read, so a concurrent write simply
        wins; returns the number of documents rewritten. Resources whose unique key another holds
        are listed in `conflicts` (`Type/id: why`) for an administrator to settle."""
        done, after = 0, None
        while True:
            query: dict = {F_ID: {"$gt": after}} if after is not None else {}
            docs = [d async for d in self._current[rtype].find(query, sort=[(F_ID, ASCENDING)], limit=batch)]
            if not docs:
                return done
            for d in docs:
                fresh = {k: d[k] for k in (F_ID, F_VERSION, F_UPDATED, F_JSON, F_BINARY, F_BINARY_SIZE) if k in d}
                resource = orjson.loads(d[F_JSON])
                fresh.update(self._index_fields(resource))
                keys = self._unique_keys(rtype, resource)
                if keys:
                    try:
                        await self.uniques.claim(keys, f"{rtype}/{d[F_ID]}", self._holds)
                    except FhirError as exc:
                        if conflicts is not None:
                            conflicts.append(f"{rtype}/{d[F_ID]}: {exc}")
                result = await self._current[rtype].replace_one({F_ID: d[F_ID], F_VERSION: d[F_VERSION]}, fresh)
                done += result.modified_count
            after = docs[-1][F_ID]

    # ---- writes ------------------------------------------------------------------------------

    async def create(
        self, rtype: str, resource: dict, *, content: bytes | None = None, rid: str | None = None,
        unit: Unit | None = None, provenance: ProvenanceOf | None = None,
    ) -> Version:
        """Create with a server-assigned id (or `rid`, chosen by the caller, e.g. a transaction).
        `provenance`, on every write method: builds the write's Provenance, stored in its history
        version (atomic with it) and projected into the Provenance collection when it is applied."""
        for _ in range(MAX_WRITE_ATTEMPTS):
            new_id = rid or str(uuid.uuid4())
            try:
                return await self._write_version(rtype, new_id, 1, OP_CREATE, resource, content, unit,
                                                 provenance=provenance)
            except DuplicateKeyError:
                if rid is not None:
                    raise FhirError(409, "duplicate", f"{rtype}/{rid} already exists")
        raise FhirError(500, "exception", "could not allocate a new id")

    async def update(
        self, rtype: str, rid: str, resource: dict, *, if_match: int | None = None,
        content: bytes | None = None, unit: Unit | None = None, keep_content: Version | None = None,
        provenance: ProvenanceOf | None = None,
    ) -> tuple[Version, bool]:
        """Update, or create with the client's id; returns (version, created). `keep_content`: a
        Binary version whose GridFS content the new version keeps (a change of its labels only)."""
        for _ in range(MAX_WRITE_ATTEMPTS):
            current, exists = await self._current_version(rtype, rid, unit)
            self._check_if_match(rtype, rid, if_match, current, exists)
            version = current + 1
            op = OP_UPDATE if exists else OP_CREATE
            try:
                written = await self._write_version(rtype, rid, version, op, resource, content, unit, keep_content,
                                                    provenance)
                return written, not exists
            except DuplicateKeyError:
                await self._after_lost_race(rtype, rid, version, unit)
        raise FhirError(409, "conflict", f"{rtype}/{rid} is being updated concurrently; try again")

    async def delete(
        self, rtype: str, rid: str, *, if_match: int | None = None, unit: Unit | None = None,
        provenance: ProvenanceOf | None = None,
    ) -> Version | None:
        """Write a tombstone; None when there was nothing to delete (delete is idempotent)."""
        for _ in range(MAX_WRITE_ATTEMPTS):
            current, exists = await self._current_version(rtype, rid, unit)
            self._check_if_match(rtype, rid, if_match, current, exists)
            if not exists:
                return None
            version = current + 1
            try:
                return await self._write_version(rtype, rid, version, OP_DELETE, None, None, unit,
                                                 provenance=provenance)
            except DuplicateKeyError:
                await self._after_lost_race(rtype, rid, version, unit)
        raise FhirError(409, "conflict", f"{rtype}/{rid} is being updated concurrently; try again")

    @staticmethod
    def _check_if_match(rtype: str, rid: str, if_match: int | None, current: int, exists: bool) -> None:
        if if_match is not None and (current == 0 or if_match != current):
            state = f"is at version {current}" if current else "does not exist"
            raise FhirError(412, "conflict", f"If-Match expected version {if_match} but {rtype}/{rid} {state}")

    async def _current_version(self, rtype: str, rid: str, unit: Unit | None) -> tuple[int, bool]:
        """(newest version number, whether the resource currently exists)."""
        tx = _tx(unit)
        if tx is not None and (rtype, rid) in tx.writes:
            hist = tx.writes[(rtype, rid)][0]
            return hist[F_VERSION], hist[H_OP] != OP_DELETE
        doc = await self._current[rtype].find_one({F_ID: rid}, projection={F_VERSION: 1}, session=_s(unit))
        latest = await self._history[rtype].find_one(
            {H_RESOURCE_ID: rid}, projection={F_JSON: 0}, sort=[(F_VERSION, DESCENDING)], session=_s(unit)
        ) if doc is None or tx is not None else None
        if latest is not None and latest.get(H_TX) is not None:
            # another transaction's version: finish it if committed, else wait for it (409)
            await settle(self, rtype, latest)
            return await self._current_version(rtype, rid, unit)
        if doc is not None:
            return doc[F_VERSION], True
        if latest is None:
            gone = await self.destroyed(rtype, rid)
            return (gone.version, False) if gone is not None else (0, False)
        if latest[H_OP] != OP_DELETE:  # its writer is mid-flight or died: finish its work
            full = await self._history[rtype].find_one({F_ID: latest[F_ID]}, session=_s(unit))
            assert full is not None, "history entries are never removed"
            await self._roll_forward(rtype, full, _s(unit))
            return latest[F_VERSION], True
        return latest[F_VERSION], False

    async def _after_lost_race(self, rtype: str, rid: str, version: int, unit: Unit | None) -> None:
        if unit is not None and (unit.session is not None or unit.tx is not None):
            # inside a transaction: the engine aborted it already, or ours is rolled back by its owner
            raise FhirError(409, "conflict", f"{rtype}/{rid} was modified concurrently")
        orphan = await self._history[rtype].find_one({F_ID: history_id(rid, version)})
        if orphan is not None and orphan.get(H_TX) is not None:
            await settle(self, rtype, orphan)
        elif orphan is not None:
            await self._roll_forward(rtype, orphan, None)

    async def _roll_forward(self, rtype: str, hist: dict, session) -> None:
        resource = orjson.loads(hist[F_JSON]) if hist.get(F_JSON) is not None else None
        await self._apply(rtype, hist, resource, session)

    async def _write_version(
        self, rtype: str, rid: str, version: int, op: str, resource: dict | None, content: bytes | None,
        unit: Unit | None, keep_content: Version | None = None, provenance: ProvenanceOf | None = None,
    ) -> Version:
        updated = now_ms()
        hist: dict = {F_ID: history_id(rid, version), H_RESOURCE_ID: rid, F_VERSION: version,
                      F_UPDATED: updated, H_OP: op, F_JSON: None}
        if provenance is not None and PROVENANCE in self._current:
            prov = {**provenance(version, op, updated), "id": provenance_id(rtype, rid, version)}
            hist[H_PROVENANCE] = self.stamped_json(PROVENANCE, prov, 1, fhir_instant(updated))
        if resource is not None:
            meta = resource.get("meta")
            meta = dict(meta) if isinstance(meta, dict) else {}
            meta["versionId"] = str(version)
            meta["lastUpdated"] = fhir_instant(updated)
            # resourceType, id and meta first, as FHIR renders them; then the client's elements
            stamped = {"resourceType": rtype, "id": rid, "meta": meta}
            stamped.update((k, v) for k, v in resource.items() if k not in stamped)
            resource = stamped
            hist[F_JSON] = orjson.dumps(resource)
            if content is not None:
                hist[F_BINARY] = await self.binaries.put(content, session=_s(unit))
                hist[F_BINARY_SIZE] = len(content)
            elif keep_content is not None and keep_content.binary_file is not None:
                hist[F_BINARY] = keep_content.binary_file
                hist[F_BINARY_SIZE] = keep_content.binary_size
                hist[F_BINARY_SHARED] = True
        claimed = await self._claim(rtype, rid, resource, unit) if resource is not None else []
        try:
            return await self._store_version(rtype, rid, hist, resource, unit)
        except BaseException:
            await self.uniques.release(claimed, f"{rtype}/{rid}")
            raise

    async def _claim(self, rtype: str, rid: str, resource: dict, unit: Unit | None) -> list[str]:
        """Claim the resource's unique keys (storage/unique.py) before its version is written."""
        keys = self._unique_keys(rtype, resource)
        if not keys:
            return []
        owner = f"{rtype}/{rid}"
        session = _s(unit)
        claimed = await self.uniques.claim(keys, owner, self._holds, session)
        if session is not None:
            return []  # part of the native transaction: rolled back with it
        if unit is not None:
            unit.claims += [(k, owner) for k in claimed]
        return claimed

    async def _holds(self, owner: str, key: str) -> bool | None:
        """Whether `owner` carries `key` now (None: it has no committed version yet)."""
        rtype, _, rid = owner.partition("/")
        if rtype not in self._current:
            return False
        doc = await self._current[rtype].find_one({F_ID: rid}, projection={F_JSON: 1})
        if doc is None:
            doc = await self._history[rtype].find_one({H_RESOURCE_ID: rid, **COMMITTED}, projection={F_JSON: 1},
                                                      sort=[(F_VERSION, DESCENDING)])
            if doc is None:
                return None
        if doc.get(F_JSON) is None:
            return False  # a deletion
        return key in self._unique_keys(rtype, orjson.loads(doc[F_JSON]))

    async def _store_version(self, rtype: str, rid: str, hist: dict, resource: dict | None,
                             unit: Unit | None) -> Version:
        tx = _tx(unit)
        if tx is not None:  # pending: invisible to readers until the transaction commits
            hist[H_TX] = tx.id
            await self._history[rtype].insert_one(hist)
            tx.wrote(rtype, rid, hist, resource)
            return Version.from_history(rtype, hist)
        await self._history[rtype].insert_one(hist, session=_s(unit))
        self.step()
        await self._apply(rtype, hist, resource, _s(unit))
        if not self.atomic_updates and hist[H_OP] != OP_CREATE:
            await self._settle_newer(rtype, rid, hist[F_VERSION])
        return Version.from_history(rtype, hist)

    async def _settle_newer(self, rtype: str, rid: str, version: int) -> None:
        """On an engine whose guarded replace is not atomic, a writer of an older version may have
        overwritten a newer one that was applied meanwhile: after applying ours, apply whatever is
        newer in history (the history is the truth; each writer checks after its own write, so the
        last write is always followed by a check)."""
        for _ in range(MAX_WRITE_ATTEMPTS):
            newer = await self._history[rtype].find_one(
                {H_RESOURCE_ID: rid, F_VERSION: {"$gt": version}, **COMMITTED}, sort=[(F_VERSION, DESCENDING)])
            if newer is None:
                return
            await self._roll_forward(rtype, newer, None)
            version = newer[F_VERSION]

    def step(self) -> None:
        """A point in a write or commit where a crash-injection test may stop the process."""
        if self.crash_after is not None:
            self._steps += 1
            if self._steps >= self.crash_after:
                os._exit(70)

    async def _project_provenance(self, hist: dict, session) -> None:
        """Store the Provenance a history version carries as a resource of its own (version 1, no
        history entry, search index fields), so that `Provenance?target=…`, `patient`, `agent`,
        `recorded` and `_revinclude=Provenance:target` are ordinary indexed searches. Idempotent:
        its id derives from the version, and a roll-forward finds it already there."""
        body = hist[H_PROVENANCE]
        prov = orjson.loads(body)
        doc = {F_ID: prov["id"], F_VERSION: 1, F_UPDATED: hist[F_UPDATED], F_JSON: body, **self._index_fields(prov)}
        if session is None and self.provenance_inserts is not None:
            await self.provenance_inserts.insert(doc)  # group commit; a duplicate means already projected
            return
        await self._current[PROVENANCE].insert_one(doc, session=session)  # part of the native transaction

    async def _apply(self, rtype: str, hist: dict, resource: dict | None, session) -> None:
        """Make `hist` the current version unless a newer one is current already (idempotent).
        The version's Provenance is projected first, so it is visible no later than the version."""
        rid, version = hist[H_RESOURCE_ID], hist[F_VERSION]
        if hist.get(H_PROVENANCE) is not None:
            await self._project_provenance(hist, session)
        guard = {F_ID: rid, F_VERSION: {"$lt": version}}
        current = self._current[rtype]
        if hist[H_OP] == OP_DELETE:
            await current.delete_one(guard, session=session)
            return
        doc = {F_ID: rid, F_VERSION: version, F_UPDATED: hist[F_UPDATED], F_JSON: hist[F_JSON]}
        if hist.get(F_BINARY) is not None:
            doc[F_BINARY] = hist[F_BINARY]
            doc[F_BINARY_SIZE] = hist[F_BINARY_SIZE]
        assert resource is not None, "only a delete tombstone has no resource"
        # extracting a large resource's index fields runs on a CPU thread (fhir/offload.py)
        large = len(hist[F_JSON]) >= offload.INLINE_BYTES
        doc.update(await offload.run(self._index_fields, resource) if large else self._index_fields(resource))
        if hist[H_OP] == OP_CREATE and session is None:
            # A (re)create normally finds no current document: a plain insert, which every engine
            # serves by its _id index (FerretDB v1 scans the collection for the guarded replace).
            try:
                await current.insert_one(doc)
                return
            except DuplicateKeyError:
                pass  # something is current already: only replace it if it is older
        try:
            await current.replace_one(guard, doc, upsert=True, session=session)
        except DuplicateKeyError:
            if session is not None:
                raise
            # the same or a newer version is current already (another writer rolled it forward)
