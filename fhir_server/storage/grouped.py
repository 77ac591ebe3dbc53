"""Group commit of independent inserts: concurrent writers' documents go in one `insert_many`.

Used for the Provenance projections (storage/repository.py): each write's Provenance is already
durable inside its history version, and the projection is an idempotent insert (a duplicate key
means "already projected"), so concurrent projections need no order between them and can share one
round trip and one engine commit instead of paying one each (on FerretDB every insert is its own
PostgreSQL transaction). As in the audit trail (records/trail.py): a caller queues its document and
awaits a future; one writer task per collection inserts everything queued (unordered), then what
arrived meanwhile; no timer, so a lone write is inserted at once.
"""

from __future__ import annotations

import asyncio

from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000


class GroupedInserts:
    def __init__(self, collection) -> None:
        self.collection = collection
        self._queue: list[tuple[dict, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self.batches = 0  # how many insert_many calls (observability, tests)

    async def insert(self, doc: dict) -> None:
        """Insert `doc` (a duplicate `_id` counts as done); returns once it is stored."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((doc, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await fut

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            failed: dict[int, Exception] = {}
            try:
                self.batches += 1
                await self.collection.insert_many([doc for doc, _ in batch], ordered=False)
            except BulkWriteError as exc:
                for err in exc.details.get("writeErrors", []):
                    if err.get("code") != DUPLICATE_KEY:
                        failed[err["index"]] = RuntimeError(err.get("errmsg", "insert failed"))
            except Exception as exc:  # nothing known to be stored: every waiter fails
                failed = {i: exc for i in range(len(batch))}
            except BaseException:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError("cancelled"))
                raise
            for i, (_, fut) in enumerate(batch):
                if not fut.done():
                    if i in failed:
                        fut.set_exception(failed[i])
                    else:
                        fut.set_result(None)
