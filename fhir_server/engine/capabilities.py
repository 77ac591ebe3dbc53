"""What the connected MongoDB-compatible engine can do, detected once at start-up.

Production is MongoDB (replica set or sharded); development runs FerretDB v1 and tests also run
mongoeco. Rather than trusting version strings, we probe: a multi-document transaction is
attempted on a scratch collection. See docs/mongodb-compat.md.
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
    )


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
