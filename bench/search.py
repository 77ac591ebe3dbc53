"""Search benchmark on FerretDB v1 + PostgreSQL: p50/p99 of the frequent searches at growing sizes.

    .venv/bin/python bench/search.py                          # 10k, 100k, 1M DocumentReferences (~26 min on 2 cores)
    .venv/bin/python bench/search.py --scales 10000,100000    # smaller run (~13 min)
    .venv/bin/python bench/search.py --no-hand-indexes        # skip the hand-made PostgreSQL index experiment

What one run does (docs/benchmarks.md, section "Search benchmark", has the results and analysis):
1. initdb's a throw-away PostgreSQL cluster (bench/engines.py PostgresCluster; as root it runs as the
   `postgres` user), tunes it for bulk loading (fsync=off, synchronous_commit=off, full_page_writes=off,
   shared_buffers=2GB: a benchmark cluster, never a production setting) and starts FerretDB v1
   (`--handler=postgresql`) on it;
2. creates the server's indexes (Repository.ensure_indexes with fhir_server.search.extract.index_specs);
3. for each scale, grows the same database to that many DocumentReferences (bench/search_dataset.py:
   1 patient per 10 documents, 1 AuditEvent per 5, 1 practitioner per 200), written directly in the
   repository's document layout (history version 1 + current document with index_fields), with
   `insert_many(ordered=False)` in batches of 1000 from 2 loader processes; loading 1M documents
   through the HTTP API would take hours on FerretDB (every server write is O(collection size),
   see the CRUD section of docs/benchmarks.md), so it is not done. A scale that does not finish
   within --load-budget seconds (default 1500, counted over all scales) stops the growth at the last
   complete unit of 10k documents, which is then measured as the final scale;
4. starts the server (`fhir_server.cli serve`, 1 worker, FHIR_INSECURE_DEV_MODE=true: no token) and,
   for each query, times it through HTTP (sequential, one keep-alive connection; a few warm-up
   requests, then up to --samples requests on different patients, bounded by --cell-seconds) and the
   same database work done directly with PyMongo (count + page find + include finds, which is what
   the server runs for one search); records the engine's explain (FerretDB returns PostgreSQL's plan);
5. optionally (default on; clearly separate in the output) creates GIN expression indexes by hand on
   FerretDB's PostgreSQL tables for the pushed-down `_jsonb -> 'field' @> '"value"'` conditions,
   re-runs explain and the timings, and drops them again before the next scale;
6. writes bench/results/search-<time>.json and .md, and prints the Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import orjson  # noqa: E402
import search_dataset as ds  # noqa: E402
from common import percentile  # noqa: E402
from engines import FERRETDB_BIN, PostgresCluster, _ferret_version  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from pymongo.errors import BulkWriteError  # noqa: E402

from fhir_server.engine.ferretdb import EmbeddedFerretDB  # noqa: E402
from fhir_server.engine.postgres import SETTINGS  # noqa: E402
from fhir_server.search.extract import index_fields, index_specs  # noqa: E402
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

RESULTS = HERE / "results"
DATABASE = "fhir"
TYPES = ("Organization", "Practitioner", "Patient", "DocumentReference", "AuditEvent")
UNIT = 10_000  # documents per load unit (the granularity at which a load can stop)
PAGE = 50  # the server's default page size
BASE_URL = "http://127.0.0.1/fhir"
INDEXED = ("patient-identifier", "patient-family-given", "patient-family-prefix", "docref-patient-type-date",
           "audit-patient-date")
P50_TARGET_MS = 15.0
GROWTH_TARGET = 2.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- engine --------------------------------------------------------------------------------------

class PgEngine:
    """PostgresCluster (bench/engines.py) tuned for loading, then FerretDB v1 on it."""

    TUNING = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "'2GB'",
              "max_wal_size": "'8GB'", "checkpoint_timeout": "'30min'", "work_mem": "'16MB'"}

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "pg").mkdir(parents=True, exist_ok=True)
        self.pg = PostgresCluster(root / "pg")
        self.ferret: EmbeddedFerretDB | None = None

    def start(self) -> str:
        url = self.pg.start()
        for k, v in self.TUNING.items():
            self.psql(f"ALTER SYSTEM SET {k} = {v}", db="postgres")
        opts = f"-p {self.pg.port} -k {self.pg.root} {SETTINGS}"
        self._run([str(self.pg.bindir / "pg_ctl"), "-D", str(self.pg.data), "-l", str(self.pg.root / "postgres.log"),
                   "-w", "-t", "60", "-o", opts, "restart"])
        self.ferret = EmbeddedFerretDB(FERRETDB_BIN, self.root / "ferretdb", handler="postgresql", postgresql_url=url)
        return self.ferret.start()

    def _run(self, cmd: list[str]) -> str:
        done = subprocess.run(self.pg._as_user(cmd), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {done.stderr.strip()[-600:]}")
        return done.stdout

    def psql(self, sql: str, db: str = "ferretdb") -> str:
        return self._run([str(self.pg.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
                          "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])

    def tables(self) -> dict[str, str]:
        """Collection name -> PostgreSQL table of FerretDB's mapping (schema = database name)."""
        out = self.psql(f"SELECT _jsonb->>'_id', _jsonb->>'table' FROM {DATABASE}._ferretdb_database_metadata")
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    def sizes(self) -> dict[str, str]:
        out = {}
        for coll, table in self.tables().items():
            if coll in TYPES or coll.removesuffix("_history") in ("DocumentReference",):
                out[coll] = self.psql(f"SELECT pg_size_pretty(pg_total_relation_size('{DATABASE}.{table}'))").strip()
        return out

    def stop(self) -> None:
        if self.ferret:
            self.ferret.stop()
        self.pg.stop()


# ---- loading -------------------------------------------------------------------------------------

_client: MongoClient | None = None


def _docs(kind: str, start: int, stop: int) -> tuple[list[dict], list[dict]]:
    """History and current documents of resources [start, stop) of `kind`, as Repository writes them."""
    now = now_ms()
    hist, cur = [], []
    for r in ds.resources(kind, start, stop):
        rid = r["id"]
        meta = dict(r.get("meta") or {})
        meta.update(versionId="1", lastUpdated=fhir_instant(now))
        stamped = {"resourceType": kind, "id": rid, "meta": meta}
        stamped.update((k, v) for k, v in r.items() if k not in stamped)
        js = orjson.dumps(stamped)
        hist.append({F_ID: history_id(rid, 1), H_RESOURCE_ID: rid, F_VERSION: 1, F_UPDATED: now, H_OP: OP_CREATE,
                     F_JSON: js})
        cur.append({F_ID: rid, F_VERSION: 1, F_UPDATED: now, F_JSON: js, **index_fields(stamped)})
    return hist, cur


def _insert(coll, docs: list[dict]) -> None:
    for i in range(0, len(docs), 1000):
        try:
            coll.insert_many(docs[i:i + 1000], ordered=False)
        except BulkWriteError as exc:  # a re-run over existing ids: duplicates are fine, nothing else is
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise


def load_chunk(task: tuple) -> tuple[str, int]:
    global _client
    uri, kind, start, stop = task
    if _client is None:
        _client = MongoClient(uri)
    db = _client[DATABASE]
    hist, cur = _docs(kind, start, stop)
    _insert(db[history_collection(kind)], hist)
    _insert(db[kind], cur)
    return kind, len(cur)


def unit_tasks(uri: str, d0: int, d1: int) -> list[tuple]:
    """Load tasks (chunks of <= 1000) growing the dataset from d0 to d1 documents."""
    c0, c1 = ds.counts(d0) if d0 else {k: 0 for k in ds.counts(ds.BLOCK)}, ds.counts(d1)
    tasks = [(uri, "Organization", 0, 5)] if d0 == 0 else []
    for kind in ("Practitioner", "Patient", "DocumentReference", "AuditEvent"):
        for s in range(c0[kind], c1[kind], 1000):
            tasks.append((uri, kind, s, min(s + 1000, c1[kind])))
    return tasks


def validate_sample() -> None:
    from fhir_server.fhir.validation import validate_resource

    for kind in TYPES:
        for r in ds.resources(kind, 0, 5):
            validate_resource(r, expected_type=kind)


async def ensure_indexes(uri: str) -> None:
    from pymongo import AsyncMongoClient

    from fhir_server.storage.binaries import BinaryStore
    from fhir_server.storage.repository import Repository

    client = AsyncMongoClient(uri)
    db = client[DATABASE]
    await Repository(client, db, TYPES, BinaryStore(db), index_fields, index_specs).ensure_indexes()
    await client.close()


# ---- queries -------------------------------------------------------------------------------------

def _year(instant: str) -> int:
    return int(instant[:4])


def make_query(name: str, rng: random.Random, docs: int) -> tuple[str, list[tuple[str, str]]]:
    """(resource type, search parameters) of one sample of query `name`, on data that exists."""
    c = ds.counts(docs)
    if name in ("patient-identifier", "patient-family-given", "patient-family-prefix", "patient-identifier-revinclude"):
        p = ds.patient(rng.randrange(c["Patient"]))
        if name == "patient-family-given":
            return "Patient", [("family", p["name"][0]["family"]), ("given", p["name"][0]["given"][0])]
        if name == "patient-family-prefix":  # what one types in a search box: the first letters
            return "Patient", [("family", p["name"][0]["family"][:4]), ("given", p["name"][0]["given"][0][:3])]
        params = [("identifier", f"{ds.base.INS_NIR_SYSTEM}|{p['identifier'][0]['value']}")]
        if name.endswith("revinclude"):
            params.append(("_revinclude", "DocumentReference:subject"))
        return "Patient", params
    if name.startswith("docref"):
        d = ds.document_reference(rng.randrange(c["DocumentReference"]))
        patient = d["subject"]["reference"]
        if name == "docref-patient-include-author":
            return "DocumentReference", [("patient", patient), ("_sort", "-date"),
                                         ("_include", "DocumentReference:author")]
        y = _year(d["date"])
        return "DocumentReference", [("patient", patient), ("type", f"{ds.LOINC}|{d['type']['coding'][0]['code']}"),
                                     ("date", f"ge{y}-01-01"), ("date", f"lt{y + 1}-01-01"), ("_sort", "-date")]
    if name == "audit-patient-date":
        a = ds.audit_event(rng.randrange(c["AuditEvent"]))
        y = _year(a["recorded"])
        return "AuditEvent", [("patient", a["entity"][0]["what"]["reference"]), ("date", f"ge{y}-01-01"),
                              ("date", f"lt{y + 1}-01-01")]
    raise ValueError(name)


QUERIES = ("patient-identifier", "patient-family-given", "patient-family-prefix", "docref-patient-type-date",
           "audit-patient-date",
           "docref-patient-include-author", "patient-identifier-revinclude")


def url_of(rtype: str, params: list[tuple[str, str]]) -> str:
    return f"/fhir/{rtype}?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="/:")


def compiled(rtype: str, params: list[tuple[str, str]]):
    from fhir_server.search import mongo
    from fhir_server.search.parse import parse
    from fhir_server.storage.repository import flatten

    q = parse(rtype, params)
    return q, flatten(mongo.compile(q, {}, base_url=BASE_URL)), mongo.sort_spec(q)


def raw_search(db, rtype: str, params: list[tuple[str, str]], explain: bool = False):
    """What the server asks the database for one search: one page (+ a count when there are more
    matches than a page), then the include finds."""
    from fhir_server.search.registry import REFERENCE, field_name

    q, flt, sort = compiled(rtype, params)
    steps = [("count", rtype, flt, None, None)]
    if explain:
        out = [("find", rtype, flt, sort, PAGE + 1)]
    else:  # the server counts only when the first page does not hold every match (records/search.py)
        page = list(db[rtype].find(flt, sort=sort, limit=PAGE + 1))
        if len(page) > PAGE:
            db[rtype].count_documents(flt)
        page = page[:PAGE]
    for inc in q.include:
        if explain:
            out.append(("find", inc.target_type or "Practitioner", {"_id": {"$in": ["<ids>"]}}, [("_id", 1)], 1001))
            continue
        ids: dict[str, list[str]] = {}
        for d in page:
            refs = d.get(field_name(REFERENCE, inc.param)) or []
            for ref in refs if isinstance(refs, list) else [refs]:
                t, _, i = ref.partition("/")
                ids.setdefault(t, []).append(i)
        for t, i in ids.items():
            list(db[t].find({"_id": {"$in": i}}, sort=[("_id", 1)], limit=1001))
    for rev in q.revinclude:
        field = field_name(REFERENCE, rev.param)
        if explain:
            out.append(("find", rev.source_type, {field: {"$in": ["<refs>"]}}, [("_id", 1)], 1001))
            continue
        refs = [f"{rtype}/{d['_id']}" for d in page]
        if refs:
            list(db[rev.source_type].find({field: {"$in": refs}}, sort=[("_id", 1)], limit=1001))
    return (steps + out) if explain else None


def _plan_nodes(plan: dict, out: list[str]) -> None:
    node = plan.get("Node Type", "?")
    if "Index Name" in plan:
        node += f" using {plan['Index Name']}"
    elif "Relation Name" in plan:
        node += f" on {plan['Relation Name'].rsplit('_', 1)[0]}"
    out.append(node)
    for child in plan.get("Plans", []):
        _plan_nodes(child, out)


def explain(db, kind: str, rtype: str, flt: dict, sort, limit) -> dict:
    flt = _concrete(db, rtype, flt)
    if kind == "count":
        cmd = {"aggregate": rtype, "pipeline": [{"$match": flt}, {"$group": {"_id": 1, "n": {"$sum": 1}}}],
               "cursor": {}}
    else:
        cmd = {"find": rtype, "filter": flt, "limit": limit}
        if sort:
            cmd["sort"] = dict(sort)
    try:
        out = db.command("explain", cmd)
    except Exception as exc:  # noqa: BLE001
        return {"op": kind, "type": rtype, "error": str(exc)[:300]}
    plan = out.get("queryPlanner", {})
    plan = plan.get("Plan", plan) if isinstance(plan, dict) else {}
    nodes: list[str] = []
    if isinstance(plan, dict):
        _plan_nodes(plan, nodes)
    uses_index = any("Index" in n for n in nodes)
    return {"op": kind, "type": rtype, "filter": _short(flt), "sort": sort, "nodes": nodes, "uses_index": uses_index,
            "filterPushdown": out.get("filterPushdown"), "sortPushdown": out.get("sortPushdown"),
            "limitPushdown": out.get("limitPushdown"), "sql_filter": _sql_filters(plan)}


def _sql_filters(plan: dict) -> list[str]:
    out = []
    for key in ("Filter", "Index Cond", "Recheck Cond"):
        if key in plan:
            out.append(f"{key}: {plan[key]}"[:400])
    for child in plan.get("Plans", []):
        out += _sql_filters(child)
    return out


def _concrete(db, rtype: str, flt: dict) -> dict:
    """Replace the include placeholders by real values (ids of a few existing documents)."""
    text = json.dumps(flt, default=str)
    if "<ids>" in text or "<refs>" in text:
        ids = [d["_id"] for d in db["Practitioner" if "<ids>" in text else "Patient"].find({}, {"_id": 1}).limit(3)]
        (key, cond), = flt.items()
        vals = ids if "<ids>" in text else [f"Patient/{i}" for i in ids]
        return {key: {"$in": vals}}
    return flt


def _short(flt: dict) -> str:
    s = json.dumps(flt, default=str, ensure_ascii=False)
    return s if len(s) < 300 else s[:297] + "..."


# ---- timing --------------------------------------------------------------------------------------

def stats(lat: list[float]) -> dict:
    s = sorted(lat)
    return {"n": len(s), "p50": round(percentile(s, 50), 2), "p99": round(percentile(s, 99), 2),
            "max": round(s[-1], 2) if s else None}


async def time_http(port: int, samples: list[tuple[str, list]], warmup: int, budget: float, min_n: int) -> tuple[dict, dict]:
    from httpclient import Client, encode

    c = Client(port)
    lat: list[float] = []
    info: dict = {}
    t_end = None
    try:
        for i, (rtype, params) in enumerate(samples):
            raw = encode("GET", url_of(rtype, params), port=port)
            s = time.perf_counter()
            status, _, body = await c.send(raw)
            e = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"{rtype} {params}: HTTP {status} {body[:300]!r}")
            if i == warmup:
                b = orjson.loads(body)
                modes: dict[str, int] = {}
                for en in b.get("entry", []):
                    m = en.get("search", {}).get("mode", "?")
                    modes[m] = modes.get(m, 0) + 1
                info = {"example_url": url_of(rtype, params), "total": b.get("total"), "entries": modes}
            if i >= warmup:
                lat.append((e - s) * 1000)
                t_end = t_end or (s + budget)
                if len(lat) >= min_n and e > t_end:
                    break
    finally:
        c.close()
    return stats(lat), info


def time_raw(db, samples: list[tuple[str, list]], warmup: int, budget: float, min_n: int) -> dict:
    lat: list[float] = []
    t_end = None
    for i, (rtype, params) in enumerate(samples):
        s = time.perf_counter()
        raw_search(db, rtype, params)
        e = time.perf_counter()
        if i >= warmup:
            lat.append((e - s) * 1000)
            t_end = t_end or (s + budget)
            if len(lat) >= min_n and e > t_end:
                break
    return stats(lat)


HAND_INDEXES = [  # (collection, index field): the equality conditions FerretDB pushes down as @>
    ("Patient", "t_identifier"), ("DocumentReference", "r_patient"), ("DocumentReference", "r_subject"),
    ("AuditEvent", "r_patient"), ("Practitioner", "t_identifier"),
]


def hand_indexes(engine: PgEngine, create: bool) -> list[str]:
    """Create (or drop) the experiment's GIN indexes, and restart FerretDB so that its connections
    start afresh with plan_cache_mode=force_custom_plan.

    FerretDB v1 sends `WHERE _jsonb->$1 @> $2` as a prepared statement with the *field name* as a
    parameter: only a custom plan (parameters known) can match an expression index on
    `_jsonb->'field'`. PostgreSQL switches a prepared statement to its generic plan when that does
    not look dearer than the custom ones so far, and a connection that ran the statement before the
    index existed (seq scans both ways) keeps the generic seq scan afterwards; measured: no gain at
    all until FerretDB reconnected. force_custom_plan makes the index usable reliably.
    """
    tables = engine.tables()
    done = []
    for coll, field in HAND_INDEXES:
        name = f"bench_gin_{coll.lower()}_{field.replace('-', '_')}"
        if create:
            engine.psql(f"CREATE INDEX IF NOT EXISTS {name} ON {DATABASE}.{tables[coll]} "
                        f"USING gin ((_jsonb -> '{field}') jsonb_path_ops)")
            done.append(f"CREATE INDEX {name} ON {DATABASE}.<{coll} table> USING gin ((_jsonb -> '{field}') jsonb_path_ops)")
        else:
            engine.psql(f"DROP INDEX IF EXISTS {DATABASE}.{name}")
    if create:
        engine.psql("ALTER DATABASE ferretdb SET plan_cache_mode = force_custom_plan", db="postgres")
        done.append("ALTER DATABASE ferretdb SET plan_cache_mode = force_custom_plan")
        engine.psql("ANALYZE")
    else:
        engine.psql("ALTER DATABASE ferretdb RESET plan_cache_mode", db="postgres")
    engine.ferret.stop()
    engine.ferret.start()
    return done


def projected_s(prev: list[dict], variant: str, name: str, docs: int) -> float | None:
    """Server p50 (s) of `name` at `docs`, extrapolated linearly from the last scale measured."""
    done = [r for r in prev if r["variant"] == variant and r["query"] == name and r["server"].get("p50")]
    if not done:
        return None
    last = done[-1]
    return last["server"]["p50"] / 1000 * docs / last["scale"]


async def measure(args, engine: PgEngine, uri: str, docs: int, work: Path, variant: str,
                  prev: list[dict]) -> list[dict]:
    from crud import Server  # the CRUD benchmark's server launcher, reused as is

    db = MongoClient(uri)[DATABASE]
    server = Server(uri, DATABASE, 1, None, work)
    rows = []
    try:
        await server.ready(timeout=600)
        for name in QUERIES:
            guess = projected_s(prev, variant, name, docs)
            if guess is not None and guess > args.max_request_seconds:
                rows.append({"scale": docs, "variant": variant, "query": name, "skipped": True,
                             "projected_s": round(guess, 1), "server": {}, "raw": {}, "explain": []})
                log(f"  {variant:8} {name:30} skipped: linear projection {guess:.0f}s per request "
                    f"> --max-request-seconds {args.max_request_seconds}")
                continue
            rng = random.Random(f"{name}:{docs}")
            samples = [make_query(name, rng, docs) for _ in range(args.warmup + args.samples)]
            t0 = time.perf_counter()
            http, info = await time_http(server.port, samples, args.warmup, args.cell_seconds, args.min_samples)
            raw = time_raw(db, samples, args.warmup, args.cell_seconds, args.min_samples)
            plans = [explain(db, *step) for step in raw_search(db, samples[0][0], samples[0][1], explain=True)]
            row = {"scale": docs, "variant": variant, "query": name, "server": http, "raw": raw, "info": info,
                   "ratio": round(http["p50"] / raw["p50"], 2) if raw["p50"] else None, "explain": plans}
            rows.append(row)
            log(f"  {variant:8} {name:30} server p50 {http['p50']:>9} p99 {http['p99']:>9} (n={http['n']})  "
                f"raw p50 {raw['p50']:>9}  index: {[p.get('uses_index') for p in plans]}  "
                f"total={info.get('total')} {info.get('entries')}  [{time.perf_counter() - t0:.0f}s]")
    finally:
        server.stop()
        db.client.close()
    return rows


# ---- report --------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    out = []
    rows = report["rows"]
    for variant, title in (("baseline", "FerretDB as the server configures it (its own btree indexes)"),
                           ("hand-gin", "EXPERIMENT: + GIN expression indexes created by hand in PostgreSQL")):
        vr = [r for r in rows if r["variant"] == variant]
        if not vr:
            continue
        out.append(f"#### {title}\n")
        out.append("| scale (DocumentReferences) | query | server p50 ms | server p99 ms | n | raw driver p50 ms "
                   "| server/raw | PostgreSQL plan (count; page; includes) |")
        out.append("|---|---|---:|---:|---:|---:|---:|---|")
        for r in vr:
            if r.get("skipped"):
                out.append(f"| {r['scale']:,} | {r['query']} | skipped | (projected ~{r['projected_s']} s per "
                           f"request from the previous scale) | | | | |")
                continue
            plan = "; ".join(", ".join(p.get("nodes") or [p.get("error", "?")]) for p in r["explain"])
            out.append(f"| {r['scale']:,} | {r['query']} | {r['server']['p50']} | {r['server']['p99']} | "
                       f"{r['server']['n']} | {r['raw']['p50']} | {r['ratio']} | {plan} |")
        out.append("")
        scales = sorted({r["scale"] for r in vr})
        if len(scales) > 1:
            lo, hi = scales[0], scales[-1]
            out.append(f"Growth {lo:,} -> {hi:,} (server p50) and targets (p50 < {P50_TARGET_MS} ms at the largest "
                       f"scale; growth <= {GROWTH_TARGET}x):\n")
            out.append("| query | p50 at smallest | p50 at largest | growth | p50 target | growth target |")
            out.append("|---|---:|---:|---:|---|---|")
            for q in QUERIES:
                a = next((r for r in vr if r["scale"] == lo and r["query"] == q), None)
                b = next((r for r in vr if r["scale"] == hi and r["query"] == q), None)
                if not a or not b or b.get("skipped") or a.get("skipped"):
                    continue
                g = b["server"]["p50"] / a["server"]["p50"]
                out.append(f"| {q} | {a['server']['p50']} | {b['server']['p50']} | {g:.1f}x | "
                           f"{'met' if b['server']['p50'] < P50_TARGET_MS else 'NOT met'} | "
                           f"{'met' if g <= GROWTH_TARGET else 'NOT met'} |")
            out.append("")
    return "\n".join(out)


# ---- main ----------------------------------------------------------------------------------------

async def amain(args) -> dict:
    started = time.perf_counter()
    scales = [int(s) for s in args.scales.split(",")]
    for s in scales:
        if s % UNIT:
            raise SystemExit(f"scales must be multiples of {UNIT}")
    work = Path(tempfile.mkdtemp(prefix="fhir-search-bench-"))
    engine = PgEngine(work)
    report: dict = {"started": datetime.now(timezone.utc).isoformat(), "args": vars(args), "rows": [], "loads": [],
                    "work": str(work)}
    try:
        from crud import machine  # noqa: PLC0415

        report["machine"] = machine()
    except Exception:  # noqa: BLE001
        pass
    try:
        uri = engine.start()
        report["engine"] = {"ferretdb": _ferret_version(), "postgresql": engine.pg.version(),
                            "tuning": PgEngine.TUNING}
        log(f"engine up: {uri} (PostgreSQL on 127.0.0.1:{engine.pg.port}, data in {work})")
        validate_sample()
        await ensure_indexes(uri)
        loaded = 0
        load_s = 0.0
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.loaders) as pool:
            for target in scales:
                t0 = time.perf_counter()
                stopped = False
                while loaded < target:
                    if load_s + (time.perf_counter() - t0) > args.load_budget:
                        stopped = True
                        break
                    nxt = loaded + UNIT
                    for _ in pool.imap_unordered(load_chunk, unit_tasks(uri, loaded, nxt)):
                        pass
                    loaded = nxt
                    if loaded % 100_000 == 0 or loaded == target:
                        el = time.perf_counter() - t0
                        log(f"loaded {loaded:,} DocumentReferences ({el:.0f}s for this scale)")
                dt = time.perf_counter() - t0
                load_s += dt
                engine.psql("ANALYZE")
                counts = ds.counts(loaded)
                report["loads"].append({"target": target, "reached": loaded, "seconds": round(dt, 1),
                                        "counts": counts, "sizes": engine.sizes()})
                log(f"scale {loaded:,}: {counts} in {dt:.0f}s; sizes {report['loads'][-1]['sizes']}")
                if loaded == 0:
                    break
                if stopped and report["rows"] and report["rows"][-1]["scale"] == loaded:
                    break
                report["rows"] += await measure(args, engine, uri, loaded, work, "baseline", report["rows"])
                if args.hand_indexes:
                    t1 = time.perf_counter()
                    report["hand_indexes"] = hand_indexes(engine, True)
                    log(f"hand-made GIN indexes created in {time.perf_counter() - t1:.0f}s")
                    report["rows"] += await measure(args, engine, uri, loaded, work, "hand-gin", report["rows"])
                    hand_indexes(engine, False)
                if stopped:
                    log(f"load budget ({args.load_budget}s) exhausted: stopped at {loaded:,} DocumentReferences")
                    report["stopped_at"] = loaded
                    break
    finally:
        engine.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)])
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="10000,100000,1000000", help="DocumentReference counts (multiples of 10000)")
    ap.add_argument("--samples", type=int, default=100, help="timed requests per query and scale (at most)")
    ap.add_argument("--min-samples", type=int, default=5, help="timed requests even past --cell-seconds")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cell-seconds", type=float, default=10.0, help="time bound per (query, scale, target)")
    ap.add_argument("--max-request-seconds", type=float, default=20.0,
                    help="skip a query at a scale where its server p50, extrapolated linearly from the previous "
                         "scale, exceeds this")
    ap.add_argument("--load-budget", type=float, default=1500.0, help="seconds of loading over all scales")
    ap.add_argument("--loaders", type=int, default=2, help="loader processes")
    ap.add_argument("--no-hand-indexes", dest="hand_indexes", action="store_false")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cluster directory")
    args = ap.parse_args(argv)
    report = asyncio.run(amain(args))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"search-{stamp}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    path.with_suffix(".md").write_text(md)
    print(md)
    log(f"total {report['total_seconds']}s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
