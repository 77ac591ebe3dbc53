"""What the connected MongoDB-compatible engine can do, detected once at start-up.

Production is MongoDB (replica set or sharded); development runs FerretDB v1 and tests also run
mongoeco. Rather than trusting version strings, we probe: a multi-document transaction is
attempted on a scratch collection, and the plan of an `$in` query says whether the engine serves
it from an index (FerretDB v1 does only with this project's pg-logical-pushdown patch on its
PostgreSQL backend). See docs/mongodb-compat.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError


@dataclass(frozen=True, slots=True)
class EngineCapabilities:
    name: str  # mongodb | ferretdb | mongoeco | unknown
    version: str
    transactions: bool
    replica_set: bool
    in_pushdown: bool = True  # `{f: {$in: [...]}}` reaches the engine's indexes (else: split per value)
    # A filtered replace is atomic (MongoDB). FerretDB v1 reads the row, checks the filter in Go and
    # writes it back: two concurrent guarded replaces can both pass their guard (docs/mongodb-compat.md).
    atomic_updates: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


async def detect(client: AsyncMongoClient, database: str) -> EngineCapabilities:
    info = await client.admin.command("buildInfo")
    hello = await client.admin.command("hello")
    if "ferretdbVersion" in info:
        name, version = "ferretdb", str(info["ferretdbVersion"])
    elif info.get("gitVersion") == "mongoeco":
        name, version = "mongoeco", str(info.get("version", ""))
    elif "version" in info:
        name, version = "mongodb", str(info["version"])
    else:
        name, version = "unknown", ""
    return EngineCapabilities(
        name=name,
        version=version,
        transactions=await _probe_transactions(client, database),
        replica_set="setName" in hello or hello.get("msg") == "isdbgrid",
        in_pushdown=name != "ferretdb" or await _probe_in_pushdown(client, database),
        atomic_updates=name != "ferretdb",
    )


async def _probe_in_pushdown(client: AsyncMongoClient, database: str) -> bool:
    """FerretDB's explain says whether a filter was pushed down to SQL (`filterPushdown`)."""
    try:
        plan = await client[database].command(
            "explain", {"find": "_capability_probe", "filter": {"_id": {"$in": ["probe", "probe-2"]}}})
    except PyMongoError:
        return False
    return plan.get("filterPushdown") is True


async def _probe_transactions(client: AsyncMongoClient, database: str) -> bool:
    scratch = client[database]["_capability_probe"]
    try:
        await scratch.update_one({"_id": "probe"}, {"$set": {"n": 0}}, upsert=True)
        async with client.start_session() as session:
            async with await session.start_transaction():
                await scratch.update_one({"_id": "probe"}, {"$inc": {"n": 1}}, session=session)
        return True
    except PyMongoError:
        return False
