"""Unique keys across current resources (a Patient's INS), enforced under concurrency.

A key is *claimed* by inserting `{_id: key, owner: "Type/id", at}` into `_unique_keys` before the
owner's version is written: the unique `_id` is the lock, so of twenty concurrent creates with one
INS exactly one claims it, on every engine (FerretDB v1, MongoDB replica sets and sharded clusters,
where a unique secondary index over a multikey field would not be enforceable across shards, and
where the application-level transactions of storage/transactions.py apply versions to the current
collection only after their commit point).

Claims are never released eagerly, which keeps the protocol crash-safe: a claim is *stale* when its
owner no longer carries the key (updated, deleted, or never written because its writer crashed or
its transaction was rolled back), and a stale claim is taken over with a compare-and-swap on
(owner, at). A claim whose owner has no committed version yet is *in progress* and wins for
`IN_PROGRESS_SECONDS` (its writer may still commit); after that it is stale too. A unit of work that
rolls back releases what it claimed at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from pymongo.errors import DuplicateKeyError

from fhir_server.fhir.outcome import FhirError
from fhir_server.storage.documents import now_ms

COLLECTION = "_unique_keys"
IN_PROGRESS_SECONDS = 60
# owner -> True (carries the key), False (does not: stale), None (no committed version yet)
Holds = Callable[[str, str], Awaitable[bool | None]]


def conflict(key: str) -> FhirError:
    kind, _, _ = key.partition(":")
    if kind == "ins":
        return FhirError(409, "duplicate", "a Patient with this INS already exists: an INS identifies exactly one "
                                           "record", ["Patient.identifier"])
    return FhirError(409, "duplicate", "another resource already holds this unique value")


class UniqueKeys:
    def __init__(self, db) -> None:
        self.col = db[COLLECTION]

    async def claim(self, keys: list[str], owner: str, holds: Holds, session=None) -> list[str]:
        """Claim every key for `owner` or raise 409; returns the keys newly claimed (to release on
        rollback). Inside a native MongoDB transaction (`session`) the claims are part of it."""
        taken: list[str] = []
        try:
            for key in keys:
                if await self._claim_one(key, owner, holds, session):
                    taken.append(key)
        except BaseException:
            if session is None:
                await self.release(taken, owner)
            raise
        return taken

    async def _claim_one(self, key: str, owner: str, holds: Holds, session) -> bool:
        for _ in range(8):
            now = now_ms()
            try:
                await self.col.insert_one({"_id": key, "owner": owner, "at": now}, session=session)
                return True
            except DuplicateKeyError:
                pass
            doc = await self.col.find_one({"_id": key}, session=session)
            if doc is None:
                continue  # released in between: try again
            if doc["owner"] == owner:
                return False
            state = await holds(doc["owner"], key)
            at = doc["at"] if doc["at"].tzinfo else doc["at"].replace(tzinfo=now.tzinfo)
            if state is True or (state is None and at > now - timedelta(seconds=IN_PROGRESS_SECONDS)):
                raise conflict(key)
            swapped = await self.col.update_one({"_id": key, "owner": doc["owner"], "at": doc["at"]},
                                                {"$set": {"owner": owner, "at": now}}, session=session)
            if swapped.matched_count == 1:
                return True
        raise FhirError(409, "conflict", "a unique value is being claimed concurrently; try again")

    async def release(self, keys: list[str], owner: str) -> None:
        for key in keys:
            await self.col.delete_one({"_id": key, "owner": owner})
