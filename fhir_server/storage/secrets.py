"""Server-wide secrets that every worker and process must share (e.g. the paging cursor key).

Created once, at random, in the database (`server_secrets`): the first process to start inserts
it, every other one reads the same value. Never logged, never sent to clients.
"""

from __future__ import annotations

import os

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError


async def shared_secret(db: AsyncDatabase, name: str, size: int = 32) -> bytes:
    coll = db["server_secrets"]
    try:
        await coll.update_one({"_id": name}, {"$setOnInsert": {"value": os.urandom(size)}}, upsert=True)
    except DuplicateKeyError:
        pass  # another process inserted it at the same moment: read theirs
    doc = await coll.find_one({"_id": name})
    assert doc is not None
    return bytes(doc["value"])
