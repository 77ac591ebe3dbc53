"""The baselines the server is compared with, run as their own process (pinned like the server):

* `raw`: the least PyMongo (async API) work that stores and reads the same documents, on the same
  engine, database and collections as the server: read = `find_one({_id})`; create = insert the
  history version + insert the current document; update = `find_one` of the current version number,
  insert the history version, `replace_one({_id})`. The stored bytes and index fields are
  precomputed outside the timed loop (no validation, no FHIR work at all).
* `repo`: the server's own `Repository` (fhir_server/storage/repository.py) called in-process,
  without HTTP and without validation: the same queries as the server, plus its stamping and
  search-index extraction.

Usage (crud.py runs it): python bench/baseline.py --mode raw --workdir DIR --uri URI --db DB ...
Writes one JSON document with a result per (op, clients) cell to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from pymongo import AsyncMongoClient

ROOT = Path(os.environ.get("BENCH_SRC") or Path(__file__).resolve().parent.parent)  # crud.py --git-ref
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CpuMeter, closed_loop, use_uvloop  # noqa: E402

from fhir_server.storage.documents import (  # noqa: E402
    F_ID,
    F_JSON,
    F_UPDATED,
    F_VERSION,
    H_OP,
    H_RESOURCE_ID,
    OP_CREATE,
    OP_UPDATE,
    fhir_instant,
    history_id,
    now_ms,
)

RTYPE = "Patient"
PAGE = 50  # the server's default page size: it asks for one more to know whether there is a next page
ID_MARK = "00000000-0000-4000-8000-00000000ffff"  # same length as a uuid4
V_MARK = "zzVERSIONzz"  # cannot occur in the generated resources


def _indexer():
    try:
        from fhir_server.search.extract import index_fields, index_specs
    except ImportError:
        return (lambda r: {}), (lambda t: [])
    return index_fields, index_specs


def stamped_bytes(resource: dict, rid: str, version: str) -> bytes:
    """The resource as the repository stores it: resourceType, id, meta first (see Repository._write_version)."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = version
    meta["lastUpdated"] = fhir_instant(now_ms())
    out = {"resourceType": RTYPE, "id": rid, "meta": meta}
    out.update((k, v) for k, v in resource.items() if k not in out)
    return orjson.dumps(out)


@dataclass
class Template:
    pre: bytes
    post: bytes
    index: dict


def split_template(resource: dict, rid: str, version: str, mark: str, index_fields) -> Template:
    raw = stamped_bytes(resource, rid, version)
    pre, post = raw.split(mark.encode(), 1)
    return Template(pre, post, index_fields(orjson.loads(raw)))


class Baseline:
    def __init__(self, args) -> None:
        self.args = args
        work = Path(args.workdir)
        ids = json.loads((work / "ids.json").read_text())
        self.creates = [orjson.loads(line) for line in (work / "create.jsonl").read_bytes().splitlines() if line]
        self.updates = []
        for line in (work / "update.jsonl").read_bytes().splitlines():
            if line:
                rid, body = line.split(b" ", 1)
                self.updates.append((rid.decode(), orjson.loads(body)))
        self.ids = ids
        search_file = work / "search.jsonl"
        self.queries = [orjson.loads(line) for line in search_file.read_bytes().splitlines() if line] \
            if search_file.exists() else []
        self.client = AsyncMongoClient(args.uri, tz_aware=True, uuidRepresentation="standard")
        self.db = self.client[args.db]
        self.cur = self.db[RTYPE]
        self.hist = self.db[RTYPE + "_history"]
        self.created: list[str] = []
        index_fields, index_specs = _indexer()
        if args.mode == "raw":
            self.create_tpl = [split_template(r, ID_MARK, "1", ID_MARK, index_fields) for r in self.creates]
            self.update_tpl = [(rid, split_template(r, rid, V_MARK, V_MARK, index_fields)) for rid, r in self.updates]
        else:
            from fhir_server.fhir.types import SUPPORTED_TYPES
            from fhir_server.storage.binaries import BinaryStore
            from fhir_server.storage.repository import Repository

            self.repo = Repository(self.client, self.db, SUPPORTED_TYPES, BinaryStore(self.db),
                                   index_fields=index_fields, index_specs=index_specs)

    # ---- raw driver operations ---------------------------------------------------------------
    async def raw_read(self, items, ci: int, n: int) -> None:
        mine = items[ci]
        if await self.cur.find_one({F_ID: mine[n % len(mine)]}) is None:
            raise LookupError("not found")

    async def raw_create(self, items, ci: int, n: int) -> None:
        mine = items[ci]
        tpl = mine[n % len(mine)]
        rid = str(uuid.uuid4())
        now = now_ms()
        js = tpl.pre + rid.encode() + tpl.post
        await self.hist.insert_one({F_ID: history_id(rid, 1), H_RESOURCE_ID: rid, F_VERSION: 1, F_UPDATED: now,
                                    H_OP: OP_CREATE, F_JSON: js})
        await self.cur.insert_one({F_ID: rid, F_VERSION: 1, F_UPDATED: now, F_JSON: js, **tpl.index})
        self.created.append(rid)

    async def raw_update(self, items, ci: int, n: int) -> None:
        mine = items[ci]
        rid, tpl = mine[n % len(mine)]
        doc = await self.cur.find_one({F_ID: rid}, projection={F_VERSION: 1})
        v = doc[F_VERSION] + 1
        now = now_ms()
        js = tpl.pre + str(v).encode() + tpl.post
        await self.hist.insert_one({F_ID: history_id(rid, v), H_RESOURCE_ID: rid, F_VERSION: v, F_UPDATED: now,
                                    H_OP: OP_UPDATE, F_JSON: js})
        await self.cur.replace_one({F_ID: rid}, {F_ID: rid, F_VERSION: v, F_UPDATED: now, F_JSON: js, **tpl.index})

    async def raw_search(self, items, ci: int, n: int) -> None:
        mine = items[ci]
        flt, sort = mine[n % len(mine)]
        if not await self.cur.find(flt, sort=sort, limit=PAGE + 1).to_list():
            raise LookupError("no match")

    raw_prefix = raw_search

    def compiled(self, kind: str) -> list:
        """(filter, sort) per query, as the server compiles and shapes them (search/, flatten)."""
        from fhir_server.search import compile, parse, sort_spec
        from fhir_server.storage.repository import flatten

        out = []
        for q in self.queries:
            query = parse(RTYPE, [tuple(p) for p in q[kind]])
            out.append((flatten(compile(query)), sort_spec(query)))
        return out

    # ---- the server's repository, in-process -------------------------------------------------
    async def repo_read(self, items, ci: int, n: int) -> None:
        mine = items[ci]
        if await self.repo.read(RTYPE, mine[n % len(mine)]) is None:
            raise LookupError("not found")

    async def repo_create(self, items, ci: int, n: int) -> None:
        mine = items[ci]
        v = await self.repo.create(RTYPE, dict(mine[n % len(mine)]))
        self.created.append(v.id)

    async def repo_update(self, items, ci: int, n: int) -> None:
        mine = items[ci]
        rid, body = mine[n % len(mine)]
        await self.repo.update(RTYPE, rid, dict(body))

    async def repo_search(self, items, ci: int, n: int) -> None:
        mine = items[ci]
        flt, sort = mine[n % len(mine)]
        if not await self.repo.find_page(RTYPE, flt, sort, PAGE + 1):
            raise LookupError("no match")

    repo_prefix = repo_search

    # ---- cells -------------------------------------------------------------------------------
    def partition(self, op: str, clients: int, offset: int) -> list[list]:
        """Each client gets its own slice, so no two clients update one resource at the same time."""
        if op == "read":
            pool = self.ids
        elif op in ("search", "prefix"):
            pool = self.compiled(op)
        elif op == "create":
            pool = self.create_tpl if self.args.mode == "raw" else self.creates
        else:
            pool = self.update_tpl if self.args.mode == "raw" else self.updates
        pool = pool[offset % len(pool):] + pool[:offset % len(pool)]
        return [pool[i::clients] for i in range(clients)]

    async def cleanup(self) -> None:
        """Remove what a create cell added, so every cell sees the same collection size."""
        if self.created:
            ids, self.created = self.created, []
            for i in range(0, len(ids), 5000):
                chunk = ids[i:i + 5000]
                await self.cur.delete_many({F_ID: {"$in": chunk}})
                await self.hist.delete_many({H_RESOURCE_ID: {"$in": chunk}})

    async def run(self) -> dict:
        a = self.args
        await asyncio.gather(*(self.db.command("ping") for _ in range(max(a.clients))))  # open the pool
        meter = CpuMeter({"engine": a.engine_pid, "postgres": a.postgres_pid})
        results = []
        offset = random.Random(a.seed).randrange(1 << 20)
        for op in a.ops:
            fn = getattr(self, f"{a.mode}_{op}")
            # warm-up: code paths, caches and connections, not measured
            items = self.partition(op, 1, offset)
            offset += 997
            await closed_loop(1, lambda ci, n: fn(items, ci, n), duration=a.warmup, max_requests=a.max_requests,
                              record=False)
            if op == "create":
                await self.cleanup()
            for clients in a.clients:
                items = self.partition(op, clients, offset)
                offset += 997
                meter.start()
                cell = await closed_loop(clients, lambda ci, n: fn(items, ci, n), duration=a.duration,
                                         max_requests=a.max_requests, max_tail=a.max_tail)
                cpu = meter.stop()
                summary = cell.summary()
                summary.update(target=a.mode, op=op, clients=clients, cpu_s={k: round(v, 3) for k, v in cpu.items()})
                print(f"  {a.mode:6} {op:6} c={clients:<3} {summary['throughput']:>8} op/s  p50 {summary['p50_ms']} ms"
                      f"  p99 {summary['p99_ms']} ms  n={summary['requests']} err={summary['errors']}",
                      file=sys.stderr, flush=True)
                results.append(summary)
                if op == "create":
                    await self.cleanup()
        await self.client.close()
        return {"mode": a.mode, "loop": self.loop_name, "cells": results}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["raw", "repo"], required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--uri", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--ops", default="read,update,create")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--max-requests", type=int, default=20000)
    p.add_argument("--max-tail", type=float, default=60.0)
    p.add_argument("--engine-pid", type=int)
    p.add_argument("--postgres-pid", type=int)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    a.ops = [o for o in a.ops.split(",") if o]
    a.clients = [int(c) for c in a.clients.split(",") if c]
    loop_name = use_uvloop()
    b = Baseline(a)
    b.loop_name = loop_name
    out = asyncio.run(b.run())
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
