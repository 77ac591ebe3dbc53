"""Atomic commit without engine transactions (FerretDB v1 has none; FerretDB v2 ignores them).

A unit of work on such an engine is an `AppTransaction`, recorded in `_transactions`:

1. **begin**: insert `{_id: tx, state: "pending", started}`.
2. **write**: each version is inserted into `<Type>_history` as usual — the unique `id/version`
   is still the lock, so a conflicting writer gets a duplicate key — but marked `_tx: tx` and not
   applied to the current collection. Readers never see a marked version: reads of current
   documents cannot (it is not there), history reads filter `_tx` out (`COMMITTED`). The
   transaction itself reads its own writes from memory (`writes`).
3. **commit point**: one single-document update `state: pending → committed` (conditional, so an
   abandoned transaction that someone already aborted cannot commit).
4. **roll forward**: apply each version to the current collection (idempotent, version-guarded),
   unmark the history versions, delete the record.

Crash recovery: a committed record is rolled forward by whoever meets it (a writer touching one of
its resources, or `recover()` at start-up); a pending record older than `STALE_SECONDS`, or an
aborted one, is rolled back (its marked versions and GridFS contents deleted). A writer meeting
another transaction's marked version that is still live gets 409 (no waiting on locks).

Isolation (docs/decisions.md): writes are all-or-nothing and invisible until the commit point;
between the commit point and the end of roll-forward (milliseconds, or until recovery after a
crash) a reader may see some of the transaction's resources at their new version and others at
their old one. Searches inside the transaction do not see its own pending writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

import orjson

from fhir_server.fhir.outcome import FhirError
from fhir_server.storage.documents import F_BINARY, F_BINARY_SHARED, F_ID, F_JSON, H_RESOURCE_ID, aware, now_ms

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

H_TX = "_tx"  # on a history version: the transaction it is pending in
COMMITTED = {H_TX: {"$exists": False}}  # the versions readers may see
TX_COLLECTION = "_transactions"
STALE_SECONDS = 60
PENDING, COMMITTED_STATE, ABORTED = "pending", "committed", "aborted"


class AppTransaction:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.id = uuid.uuid4().hex
        self.writes: dict[tuple[str, str], tuple[dict, dict | None]] = {}  # last version per resource
        self.types: set[str] = set()

    async def begin(self) -> None:
        await self.repo.db[TX_COLLECTION].insert_one({"_id": self.id, "state": PENDING, "started": now_ms()})

    def wrote(self, rtype: str, rid: str, hist: dict, resource: dict | None) -> None:
        self.writes[(rtype, rid)] = (hist, resource)
        self.types.add(rtype)
        self.repo.step()

    async def commit(self) -> None:
        record = self.repo.db[TX_COLLECTION]
        done = await record.update_one({"_id": self.id, "state": PENDING},
                                       {"$set": {"state": COMMITTED_STATE, "types": sorted(self.types)}})
        if done.modified_count != 1:  # abandoned for too long: someone rolled it back
            await _roll_back(self.repo, self.id, self.types)
            raise FhirError(409, "conflict", "the transaction took too long and was abandoned; nothing was applied")
        self.repo.step()
        await _roll_forward(self.repo, self.id, [(t, h, res) for (t, _), (h, res) in self.writes.items()],
                            self.types)

    async def abort(self) -> None:
        await self.repo.db[TX_COLLECTION].update_one({"_id": self.id, "state": PENDING},
                                                     {"$set": {"state": ABORTED}})
        await _roll_back(self.repo, self.id, self.types)


async def _roll_forward(repo: Repository, txid: str, items: list[tuple[str, dict, dict | None]],
                        types: Iterable[str]) -> None:
    for rtype, hist, resource in items:
        await repo._apply(rtype, hist, resource, None)
        repo.step()
    for rtype in sorted(types):
        await repo._history[rtype].update_many({H_TX: txid}, {"$unset": {H_TX: ""}})
        repo.step()
    await repo.db[TX_COLLECTION].delete_one({"_id": txid})


async def _roll_back(repo: Repository, txid: str, types: Iterable[str]) -> None:
    for rtype in sorted(types):
        history = repo._history[rtype]
        async for h in history.find({H_TX: txid}, projection={F_BINARY: 1, F_BINARY_SHARED: 1}):
            if h.get(F_BINARY) is not None and not h.get(F_BINARY_SHARED):
                await repo.binaries.delete(h[F_BINARY])
        await history.delete_many({H_TX: txid})
    await repo.db[TX_COLLECTION].delete_one({"_id": txid})


async def _finish(repo: Repository, tx: dict) -> None:
    """Roll a committed transaction forward from what it left in history (after a crash)."""
    types = tx.get("types") or repo.types
    items = []
    for rtype in types:
        async for h in repo._history[rtype].find({H_TX: tx["_id"]}):
            items.append((rtype, h, orjson.loads(h[F_JSON]) if h.get(F_JSON) is not None else None))
    items.sort(key=lambda item: (item[0], item[1][H_RESOURCE_ID], item[1]["_v"]))
    await _roll_forward(repo, tx["_id"], items, types)


async def _abandon(repo: Repository, tx: dict) -> bool:
    """Roll back a pending transaction nobody finished in time; False if it is still live."""
    if tx["state"] == PENDING:
        if aware(tx["started"]) > now_ms() - timedelta(seconds=STALE_SECONDS):
            return False
        await repo.db[TX_COLLECTION].update_one({"_id": tx["_id"], "state": PENDING}, {"$set": {"state": ABORTED}})
    await _roll_back(repo, tx["_id"], repo.types)
    return True


async def settle(repo: Repository, rtype: str, hist: dict) -> None:
    """A writer met another transaction's pending version: finish that transaction's fate, or 409."""
    tx = await repo.db[TX_COLLECTION].find_one({"_id": hist[H_TX]})
    if tx is None:  # its record is gone, so it was rolled back: drop the leftover
        await repo._history[rtype].delete_one({F_ID: hist[F_ID], H_TX: hist[H_TX]})
        return
    if tx["state"] == COMMITTED_STATE:
        await _finish(repo, tx)
        return
    if await _abandon(repo, tx):
        return
    raise FhirError(409, "conflict", f"{rtype}/{hist[H_RESOURCE_ID]} is being changed by a transaction in progress; "
                                     "try again")


async def recover(repo: Repository) -> int:
    """At start-up: finish committed transactions, roll back abandoned ones."""
    settled = 0
    async for tx in repo.db[TX_COLLECTION].find({}):
        if tx["state"] == COMMITTED_STATE:
            await _finish(repo, tx)
            settled += 1
        elif await _abandon(repo, tx):
            settled += 1
    return settled
