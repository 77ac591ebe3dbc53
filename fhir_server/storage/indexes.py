"""Creating indexes the same way on every engine, for every store of the storage layer (the
repository, the bulk-export jobs, the destruction jobs), without any of them importing another."""

from __future__ import annotations

from pymongo import IndexModel


async def ensure_indexes_of(collection, models: list[IndexModel]) -> None:
    """Create missing indexes one by one, by name.

    FerretDB v1.24 crashes the connection when one createIndexes command names several indexes
    that already exist (docs/mongodb-compat.md); skipping existing names avoids it everywhere.
    """
    existing = {ix["name"] async for ix in await collection.list_indexes()}
    for model in models:
        if model.document["name"] not in existing:
            await collection.create_indexes([model])
