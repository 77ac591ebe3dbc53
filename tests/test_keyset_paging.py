"""Keyset paging is exact for multi-valued and missing sort fields, on both engines (property test)."""

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient

from fhir_server.storage import keyset

names = st.lists(st.sampled_from(["a", "b", "c", "é", "Z"]), max_size=3)
# Sort fields are top-level scalars or arrays of scalars: FerretDB v1 does not sort through
# dotted paths into arrays of subdocuments (docs/mongodb-compat.md), so index fields never need it.
dates = st.lists(st.integers(0, 5).map(lambda d: datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=d)),
                 max_size=2)
docs_strategy = st.lists(st.fixed_dictionaries({"s": names, "d": dates}), min_size=1, max_size=12)
sorts = st.sampled_from([[("s", 1)], [("s", -1)], [("d", 1)], [("d", -1)], [("s", 1), ("d", -1)],
                         [("d", -1), ("s", -1)]])


async def _walk(uri: str, docs: list[dict], sort: list, page: int) -> tuple[list, list]:
    client = AsyncMongoClient(uri, tz_aware=True)
    coll = client["keyset_" + uuid.uuid4().hex[:8]]["docs"]
    try:
        stored = []
        for i, d in enumerate(docs):
            doc = {"_id": f"{i:03d}"}
            doc.update({k: v for k, v in d.items() if v})  # empty lists are left out, as index fields are
            stored.append(doc)
        await coll.insert_many(stored)
        full_sort = sort + [("_id", 1)]
        expected = [d["_id"] async for d in coll.find({}, sort=full_sort)]
        seen, position = [], None
        for _ in range(len(docs) + 2):
            flt = keyset.after(full_sort, keyset.decode(keyset.encode(position))) if position else {}
            batch = [d async for d in coll.find(flt, sort=full_sort, limit=page)]
            if not batch:
                break
            seen += [d["_id"] for d in batch]
            position = keyset.position(batch[-1], full_sort)
        return expected, seen
    finally:
        await coll.database.client.drop_database(coll.database.name)
        await client.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, sort=sorts, page=st.integers(1, 4))
def test_pages_follow_mongodb_sort_exactly_ferretdb(ferretdb_uri, docs, sort, page):
    expected, seen = asyncio.run(_walk(ferretdb_uri, docs, sort, page))
    assert seen == expected


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_strategy, sort=sorts, page=st.integers(1, 4))
def test_pages_follow_mongodb_sort_exactly_mongoeco(mongoeco_uri, docs, sort, page):
    expected, seen = asyncio.run(_walk(mongoeco_uri, docs, sort, page))
    assert seen == expected
