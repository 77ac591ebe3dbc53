"""What patient consent costs: the same requests through consent enforcement (a professional's
token) and with an operator service's `system/*` token that consent does not restrict, interleaved
in one run on one server (the embedded default: FerretDB on PostgreSQL).

Dataset (issue "The patient decides", performance): 10,000 patients with open records (a
record-creation Consent each), 50,000 DocumentReferences (5 per patient, 3 LOINC types, dates over
two years), a professional authorized by 1,000 of them. Loaded in the repository's document layout
(history version 1 + current document with its index fields), then the server starts and builds its
indexes.

Measured, 16 clients, closed loop, rounds alternating the two tokens:
* read by id of a document of an authorized patient;
* `DocumentReference?patient=…&type=…&_sort=-date` for an authorized patient;
* the professional's cross-patient search (`DocumentReference?_count=10`, every authorized record):
  its database filter comes from the consent policy's own code, and the engine's plan is shown
  (an index must serve it).
Targets: read ≥ 80 % and patient search ≥ 70 % of the unrestricted throughput.

    .venv/bin/python bench/consent.py [--patients 10000] [--authorized 1000] [--rounds 4] [--seconds 8]

Only 127.0.0.1 is contacted; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import closed_loop, machine, use_uvloop  # noqa: E402
from httpclient import Client  # noqa: E402

from fhir_server.engine.embedded import EmbeddedEngine  # noqa: E402
from fhir_server.search.extract import index_fields  # noqa: E402
from fhir_server.storage.documents import (  # noqa: E402
    F_ID,
    F_JSON,
    F_UPDATED,
    F_VERSION,
    H_OP,
    H_RESOURCE_ID,
    OP_CREATE,
    fhir_instant,
    history_collection,
    history_id,
    now_ms,
)
from tests.auth_helpers import add_client, add_user, backend_token, public_jwks, rsa_key, user_token  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402
from tests.dmp import authorization, document, record_consent  # noqa: E402

TYPES = ["11488-4", "18842-5", "11502-2"]
DOCS_PER_PATIENT = 5
DR = "Practitioner/dr-bench"


def _stamp(kind: str, r: dict, now) -> tuple[dict, dict]:
    meta = {"versionId": "1", "lastUpdated": fhir_instant(now)}
    stamped = {"resourceType": kind, "id": r["id"], "meta": meta, **{k: v for k, v in r.items() if k != "id"}}
    js = orjson.dumps(stamped)
    hist = {F_ID: history_id(r["id"], 1), H_RESOURCE_ID: r["id"], F_VERSION: 1, F_UPDATED: now, H_OP: OP_CREATE,
            F_JSON: js}
    return hist, {F_ID: r["id"], F_VERSION: 1, F_UPDATED: now, F_JSON: js, **index_fields(stamped)}


def load(uri: str, database: str, patients: int, authorized: int) -> dict:
    rng = random.Random(7)
    now = now_ms()
    by_kind: dict[str, list[dict]] = {"Practitioner": [{"id": "dr-bench", "name": [{"family": "Bench"}]}],
                                      "Patient": [], "Consent": [], "DocumentReference": []}
    for i in range(patients):
        pid = f"p{i}"
        by_kind["Patient"].append({"id": pid, "name": [{"family": f"Patient{i}"}]})
        by_kind["Consent"].append({**record_consent(pid), "id": f"rec-{pid}"})
        if i < authorized:
            by_kind["Consent"].append({**authorization(pid, [DR]), "id": f"auth-{pid}"})
        for j in range(DOCS_PER_PATIENT):
            d = document(pid, code=TYPES[j % 3], author=DR, date=f"202{5 + j % 2}-0{1 + j}-1{j}T10:00:00Z")
            by_kind["DocumentReference"].append({**d, "id": f"d{i}-{j}"})
    client: MongoClient = MongoClient(uri)
    db = client[database]
    t0 = time.perf_counter()
    for kind, resources in by_kind.items():
        for s in range(0, len(resources), 1000):
            pairs = [_stamp(kind, r, now) for r in resources[s:s + 1000]]
            db[history_collection(kind)].insert_many([h for h, _ in pairs], ordered=False)
            db[kind].insert_many([c for _, c in pairs], ordered=False)
    client.close()
    rng.shuffle(by_kind["DocumentReference"])
    return {"seconds": round(time.perf_counter() - t0, 1), **{k: len(v) for k, v in by_kind.items()}}


def start_pair(uri: str, database: str, on: str, off: str, off_env: dict, scopes: str) -> tuple[dict, str]:
    """Two servers on the same data, one with a feature (`on`) and one without (`off`, its
    benchmark-only setting in `off_env`), and the benchmark professional's token valid on both:
    the second server finds the signing keys the first created, with the first's issuer."""
    env = {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_DATABASE": database}
    servers = {on: start_server(uri, env)}
    first = servers[on]
    first.database = database
    add_client(first, "app", "public", f"openid fhirUser {scopes}")
    add_user(first, "dr.bench", "practitioner", DR, rpps="10000000009")
    token = user_token(first, "app", "dr.bench", f"openid fhirUser {scopes}")["access_token"]
    servers[off] = start_server(uri, {**env, **off_env, "FHIR_PUBLIC_BASE_URL": first.fhir_base})
    servers[off].database = database
    return servers, token


def summarize(cells: list[dict]) -> dict:
    """Medians of a mode's cells (closed_loop summaries), with every cell's throughput."""
    rps = sorted(c["throughput"] for c in cells)
    out = {"throughput_median": rps[len(rps) // 2], "throughput_all": rps,
           "p50_ms_median": sorted(c["p50_ms"] for c in cells)[len(cells) // 2],
           "errors": sum(c["errors"] for c in cells),
           "error_samples": [x for c in cells for x in c["error_samples"]][:2]}
    out.update({k: round(sorted(c[k] for c in cells)[len(cells) // 2], 2)
                for k in ("server_cpu_ms", "engine_cpu_ms") if all(k in c for c in cells)})
    return out


def _request(path: str, token: str, port: int) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/fhir+json\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()


async def measure(port: int, tokens: dict, authorized: int, rounds: int, seconds: float, clients: int) -> dict:
    conns = [Client(port) for _ in range(clients)]
    rng = random.Random(11)

    def op_for(kind: str, token: str):
        async def op(ci: int, n: int) -> None:
            p = rng.randrange(authorized)
            if kind == "read":
                path = f"/fhir/DocumentReference/d{p}-{rng.randrange(DOCS_PER_PATIENT)}"
            else:
                path = f"/fhir/DocumentReference?patient=p{p}&type=http://loinc.org|{TYPES[p % 3]}&_sort=-date"
            status, _, body = await conns[ci].send(_request(path, token, port))
            if status != 200 or (kind == "search" and b'"entry"' not in body):
                raise RuntimeError(f"{status} {body[:200]!r}")
        return op

    out: dict = {}
    for kind in ("read", "search"):
        for mode, token in tokens.items():  # warm-up
            await closed_loop(clients, op_for(kind, token), duration=2, max_requests=10**6, record=False)
        per: dict = {m: [] for m in tokens}
        for r in range(rounds):
            order = list(tokens) if r % 2 == 0 else list(reversed(tokens))
            for mode in order:
                cell = await closed_loop(clients, op_for(kind, tokens[mode]), duration=seconds, max_requests=10**7)
                per[mode].append(cell.summary())
        out[kind] = {}
        for mode, cells in per.items():
            rps = sorted(c["throughput"] for c in cells)
            out[kind][mode] = {"throughput_median": rps[len(rps) // 2], "throughput_all": rps,
                               "p50_ms_median": sorted(c["p50_ms"] for c in cells)[len(cells) // 2],
                               "errors": sum(c["errors"] for c in cells),
                               "error_samples": [s for c in cells for s in c["error_samples"]][:2]}
        out[kind]["ratio"] = round(out[kind]["consent"]["throughput_median"]
                                   / out[kind]["unrestricted"]["throughput_median"], 3)
    for c in conns:
        c.close()
    return out


async def cross_patient_plan(uri: str, database: str) -> dict:
    """The consent filter of the professional's cross-patient search, computed by the policy's own
    code, and the engine's plan for it."""
    from pymongo import AsyncMongoClient

    from fhir_server.access.consent import ConsentPolicy
    from fhir_server.access.decision import AccessDecisionPoint
    from fhir_server.auth.principal import Principal
    from fhir_server.composition import repository
    from fhir_server.storage.repository import flatten

    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
    try:
        repo = repository(client, client[database])
        principal = Principal(kind="user", subject="dr.bench", scopes=frozenset({"user/*.rs"}), fhir_user=DR,
                              role="practitioner")
        access = await AccessDecisionPoint([ConsentPolicy()]).prepare(principal, None, repo)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        flt = await access.filter("s", "DocumentReference")
        filter_ms = (time.perf_counter() - t0) * 1000
        assert flt is not None
        plan = await client[database].command({"explain": {"find": "DocumentReference", "filter": flatten(flt),
                                                           "sort": {"_lu": -1, "_id": -1}, "limit": 11}})
        text = json.dumps(plan)
        found = await repo.find_page("DocumentReference", flt, [("_lu", -1), ("_id", -1)], 11)
        return {"filter_ms": round(filter_ms, 1), "patients_in_filter": len(next(iter(
            flatten(flt).values()))["$in"]) if isinstance(next(iter(flatten(flt).values())), dict) else 1,
                "index_used": "Index Scan" in text or "IXSCAN" in text, "seq_scan": "Seq Scan" in text,
                "first_page": len(found), "plan_excerpt": _excerpt(plan)}
    finally:
        await client.close()


def _excerpt(plan: dict) -> list[str]:
    lines: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            t = node.get("Node Type")
            if t:
                lines.append(f"{t} {node.get('Index Name') or node.get('Relation Name') or ''}".strip())
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(plan)
    return lines[:8]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10000)
    ap.add_argument("--authorized", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--cache", default="host", choices=["host", "database", "off"],
                    help="FHIR_CONSENT_CACHE of the server (host: what `make run` uses with the embedded engine)")
    args = ap.parse_args()
    loop_kind = use_uvloop()
    work = Path(tempfile.mkdtemp(prefix="consent-bench-"))
    engine = EmbeddedEngine(FERRETDB_BIN, work, backend="postgresql")
    uri = engine.start()
    database = "consent_bench"
    try:
        loaded = load(uri, database, args.patients, args.authorized)
        server = start_server(uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_DATABASE": database,
                                    "FHIR_CONSENT_CACHE": args.cache})
        server.database = database
        try:
            key = rsa_key()
            add_client(server, "operator", "confidential-asymmetric", "system/*.rs", redirect_uris=(),
                       jwks=public_jwks(key), operator=True)
            add_client(server, "app", "public", "openid fhirUser user/*.rs")
            add_user(server, "dr.bench", "practitioner", DR, rpps="10000000009")
            tokens = {"consent": user_token(server, "app", "dr.bench", "openid fhirUser user/*.rs")["access_token"],
                      "unrestricted": backend_token(server, "operator", key, "system/*.rs")["access_token"]}
            port = int(server.base.rsplit(":", 1)[1])
            result = asyncio.run(measure(port, tokens, args.authorized, args.rounds, args.seconds, args.clients))
            result["cross_patient"] = asyncio.run(cross_patient_plan(uri, database))
        finally:
            stop_server(server)
    finally:
        engine.stop()
    result["dataset"] = loaded
    result["machine"] = machine(loop=loop_kind, clients=args.clients, rounds=args.rounds,
                                seconds_per_cell=args.seconds, consent_cache=args.cache)
    print(json.dumps(result, indent=2))
    print("\n| request | consent (req/s) | unrestricted (req/s) | ratio | target |\n|---|---|---|---|---|")
    for kind, target in (("read", 0.8), ("search", 0.7)):
        r = result[kind]
        print(f"| {kind} | {r['consent']['throughput_median']} | {r['unrestricted']['throughput_median']} | "
              f"{r['ratio']:.2f} | ≥ {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
