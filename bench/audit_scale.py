"""`AuditEvent?patient=…&_sort=-date` as the audit trail grows: the engine's plan and the p50 of
the patient's own query at two sizes of the AuditEvent collection (issue 10: 100k and 1M events).

One patient (the one asking, with their own SMART token) has a fixed number of events; the rest
of the trail belongs to other patients and grows. If the query is served by the
(r_patient, d_date.lo) index, its p50 does not grow with the trail; a scan would grow ten-fold.
Events are stored through the repository's own write-once path (`Repository.append`, the one the
audit trail uses) so their stored shape and index fields are the server's.

    .venv/bin/python bench/audit_scale.py [--sizes 100000 1000000] [--own 500] [--requests 200]

The default engine (FerretDB on a private PostgreSQL cluster); only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from pymongo import AsyncMongoClient, MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from fhir_server import composition  # noqa: E402
from fhir_server.access.audit_readers import ENTITY_FIELD, HIDDEN_FROM_AGENT, SECURITY_FIELD  # noqa: E402
from fhir_server.access.filters import restrict, rules_filter  # noqa: E402
from fhir_server.auth.scopes import Rule  # noqa: E402
from fhir_server.engine.embedded import EmbeddedEngine  # noqa: E402
from fhir_server.records.audit import agents  # noqa: E402
from fhir_server.search import mongo  # noqa: E402
from fhir_server.search.parse import parse  # noqa: E402
from fhir_server.storage.documents import F_JSON  # noqa: E402
from fhir_server.storage.repository import flatten  # noqa: E402
from tests.auth_helpers import add_client, add_user, user_token  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402

OWN = "p-own"
START = datetime(2025, 1, 1, tzinfo=UTC)


def _event(i: int, patient: str) -> dict:
    """A BALP read event as the trail writes it (records/audit.py), `i` minutes after START."""
    from fhir_server.auth.principal import Principal

    who = Principal(kind="user", subject=f"dr{i % 300}", client_id="app", scopes=frozenset({"user/*.rs"}),
                    fhir_user=f"Practitioner/dr{i % 300}", role="practitioner")
    recorded = (START + timedelta(minutes=i)).isoformat().replace("+00:00", "Z")
    return {"resourceType": "AuditEvent", "id": str(uuid.uuid4()),
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "action": "R", "recorded": recorded, "outcome": "0", "agent": agents(who),
            "source": {"site": "fhir-server", "observer": {"display": "fhir-server"}},
            "entity": [{"what": {"reference": f"Patient/{patient}"}, "role": {"code": "1"}},
                       {"what": {"reference": f"DocumentReference/d{i}/_history/1"}},
                       {"what": {"identifier": {"value": uuid.uuid4().hex}}}]}


async def fill(uri: str, database: str, start: int, stop: int, own_every: int) -> float:
    """Events start..stop-1: every `own_every`-th is the asking patient's, the others spread over
    10,000 other patients."""
    client: AsyncMongoClient = AsyncMongoClient(uri)
    repo = composition.repository(client, client[database])
    t0 = time.perf_counter()
    batch = []
    for i in range(start, stop):
        e = _event(i, OWN if i % own_every == 0 else f"p{i % 10000}")
        batch.append((e, {F_JSON: repo.stamped_json("AuditEvent", e, 1, e["recorded"])}))
        if len(batch) == 2000:
            await repo.append("AuditEvent", batch)
            batch = []
    if batch:
        await repo.append("AuditEvent", batch)
    await client.close()
    return time.perf_counter() - t0


def _query() -> tuple[dict, dict]:
    """The filter the server sends for the patient's own query (their compartment, the audit
    readers' rule, `patient`) and its sort."""
    query = parse("AuditEvent", [("patient", f"Patient/{OWN}"), ("_sort", "-date")])
    flt = restrict(mongo.compile(query), rules_filter("AuditEvent", (Rule(OWN),)))
    flt = {"$and": [flt, {"$or": [{SECURITY_FIELD: {"$ne": HIDDEN_FROM_AGENT}}, {ENTITY_FIELD: f"Patient/{OWN}"}]}]}
    return flatten(flt), dict(mongo.sort_spec(query))


def plan(uri: str, database: str, n: int) -> dict:
    """The engine's plan for the query, and the raw driver's p50 running it (first page, JSON only)."""
    flt, sort = _query()
    with MongoClient(uri) as c:
        out = c[database].command("explain", {"find": "AuditEvent", "filter": flt, "sort": sort, "limit": 21})
        times = []
        for i in range(n + 10):
            t = time.perf_counter()
            docs = list(c[database]["AuditEvent"].find(flt, projection={F_JSON: 1}, sort=list(sort.items()),
                                                        limit=21))
            if i >= 10:
                times.append(time.perf_counter() - t)
            assert len(docs) == 21
    text = json.dumps(out.get("queryPlanner", out))
    return {"index_served": any(n in text for n in ('"Index Scan"', '"Bitmap Index Scan"', '"Index Only Scan"')),
            "driver_p50_ms": round(statistics.median(times) * 1000, 1),
            "indexes": sorted({w.strip('"') for w in text.replace(",", " ").split() if w.strip('"').startswith(
                "auditevent_") or "r_patient" in w}), "plan": out.get("queryPlanner", out)}


def p50(base: str, token: str, n: int) -> dict:
    times = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for i in range(n + 10):
            t = time.perf_counter()
            r = c.get("/AuditEvent", params={"patient": OWN, "_sort": "-date", "_count": "20"})
            if i >= 10:
                times.append(time.perf_counter() - t)
            assert r.status_code == 200 and len(r.json()["entry"]) == 20, r.text[:300]
    times.sort()
    return {"p50_ms": round(statistics.median(times) * 1000, 1), "p95_ms": round(times[int(len(times) * .95)] * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--own", type=int, default=500, help="events of the asking patient (constant)")
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="audit-scale-"))
    engine = EmbeddedEngine(FERRETDB_BIN, work, backend="postgresql")
    uri = engine.start()
    database = "audit_scale"
    result: dict = {"sizes": {}}
    server = None
    try:
        server = start_server(uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_DATABASE": database})
        server.database = database
        add_client(server, "app", "public", "launch/patient patient/*.rs")
        add_user(server, "own", "patient", f"Patient/{OWN}")
        token = user_token(server, "app", "own", "launch/patient patient/*.rs")["access_token"]
        done = 0
        own_every = None
        for size in sorted(args.sizes):
            own_every = own_every or max(1, args.sizes[0] // args.own)  # the patient's events: placed in the first size
            seconds = asyncio.run(fill(uri, database, done, size, own_every if done == 0 else 10 ** 12))
            done = size
            with MongoClient(uri) as c:
                total = c[database]["AuditEvent"].count_documents({})
                own = c[database]["AuditEvent"].count_documents({"r_patient": f"Patient/{OWN}"})
            result["sizes"][size] = {"events": total, "own_events": own, "load_seconds": round(seconds, 1),
                                     **p50(server.fhir_base, token, args.requests), **plan(uri, database, args.requests)}
            print(json.dumps({k: v for k, v in result["sizes"][size].items() if k != "plan"}), flush=True)
    finally:
        if server is not None:
            stop_server(server)
        engine.stop()
    result["machine"] = machine()
    print(json.dumps(result, indent=1, default=str)[:20000])
    print("\n| events | the patient's | server p50 (ms) | p95 (ms) | raw driver p50 (ms) | index-served |"
          "\n|---|---|---|---|---|---|")
    for r in result["sizes"].values():
        print(f"| {r['events']:,} | {r['own_events']} | {r['p50_ms']} | {r['p95_ms']} | {r['driver_p50_ms']} | "
              f"{r['index_served']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
