"""What a bulk export costs: `Patient/{id}/$export` of a record of N resources (the Patient, its
record Consent and N-2 DocumentReferences), end to end over HTTP (kick-off, polling, download of
every file), the job's own run time (`_bulk_jobs.created` → `finished`), and the server process's
peak resident memory during the export (its high-water mark reset just before, through
`/proc/PID/clear_refs`); against the raw driver reading the same documents (one `find` per type
on the same compartment fields, each stored JSON written as a line to a file), run in a process of
its own so that its peak memory is its own.

The embedded default engine (FerretDB on PostgreSQL), one worker, insecure dev mode (no tokens:
this measures the export, not authorization).

    .venv/bin/python bench/export.py [--resources 2000] [--rounds 3]

Only 127.0.0.1 is contacted; the run stops by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.common import machine  # noqa: E402
from fhir_server.engine.embedded import EmbeddedEngine  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402
from tests.dmp import document, record_consent  # noqa: E402
from tests.helpers import new_ins  # noqa: E402

FHIR = {"Content-Type": "application/fhir+json"}
BATCH = 500


def load(c: httpx.Client, resources: int) -> str:
    r = c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Export"}], "identifier": [
        {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": new_ins()}]}, headers=FHIR)
    pid = r.json()["id"]
    assert c.post("/Consent", json=record_consent(pid), headers=FHIR).status_code == 201
    left = resources - 2
    while left > 0:
        n = min(BATCH, left)
        entries = [{"resource": document(pid, author="Practitioner/dr-bench", description=f"report {i}"),
                    "request": {"method": "POST", "url": "DocumentReference"}} for i in range(n)]
        r = c.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=FHIR)
        assert r.status_code == 200, r.text[:300]
        left -= n
    return pid


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return 0


def export_once(c: httpx.Client, server_pid: int, pid: str, types: str | None) -> dict:
    with open(f"/proc/{server_pid}/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status(server_pid, "VmRSS")
    t0 = time.perf_counter()
    r = c.get(f"/Patient/{pid}/$export", params={"_type": types} if types else {},
              headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    for _ in range(600):
        r = c.get(status_url)
        if r.status_code != 202:
            break
        time.sleep(float(r.headers["Retry-After"]))
    assert r.status_code == 200, r.text
    lines = 0
    for item in r.json()["output"]:
        with c.stream("GET", item["url"]) as f:
            for line in f.iter_lines():
                lines += bool(line)
    total = time.perf_counter() - t0
    return {"seconds_end_to_end": round(total, 3), "lines": lines, "rss_before_kb": before,
            "peak_rss_kb": _status(server_pid, "VmHWM"), "status_url": status_url}


RAW = r'''
import resource, sys, time
from pymongo import MongoClient
uri, db, pid, out = sys.argv[1:5]
t0 = time.perf_counter()
n = 0
with MongoClient(uri) as c, open(out, "wb") as f:
    d = c[db]
    for coll, flt in (("Patient", {"_id": pid}), ("Consent", {"r_patient": "Patient/" + pid}),
                      ("DocumentReference", {"$or": [{"r_subject": "Patient/" + pid}, {"r_author": "Patient/" + pid}]})):
        for doc in d[coll].find(flt, projection={"_json": 1}, sort=[("_id", 1)], batch_size=500):
            f.write(doc["_json"] + b"\n")
            n += 1
plain = time.perf_counter() - t0
# the export's own query shape: compartment OR, lastUpdated <= now, keyset on _id, pages of 500
import datetime
t1 = time.perf_counter()
m = 0
with MongoClient(uri, tz_aware=True) as c:
    d = c[db]
    until = datetime.datetime.now(datetime.timezone.utc)
    for coll, flt in (("Patient", {"_id": pid}), ("Consent", {"r_patient": "Patient/" + pid}),
                      ("DocumentReference", {"$or": [{"r_subject": "Patient/" + pid}, {"r_author": "Patient/" + pid}]})):
        after = None
        while True:
            q = {"$and": [flt, {"_lu": {"$lte": until}}] + ([{"_id": {"$gt": after}}] if after else [])}
            docs = list(d[coll].find(q, sort=[("_id", 1)], limit=500))
            m += len(docs)
            if len(docs) < 500:
                break
            after = docs[-1]["_id"]
print(n, round(plain, 3), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, m, round(time.perf_counter() - t1, 3))
'''


def raw_once(uri: str, database: str, pid: str, work: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", RAW, uri, database, pid, str(work / "raw.ndjson")],
                         capture_output=True, text=True, check=True).stdout.split()
    return {"lines": int(out[0]), "seconds": float(out[1]), "peak_rss_kb": int(out[2]), "paged_docs": int(out[3]),
            "paged_seconds": float(out[4])}


def job_seconds(uri: str, database: str, status_url: str) -> float:
    from pymongo import MongoClient

    with MongoClient(uri) as c:
        job = c[database]["_bulk_jobs"].find_one({"_id": status_url.rstrip("/").rsplit("/", 1)[1]})
    return round((job["finished"] - job["created"]).total_seconds(), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resources", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wt-export-bench-"))
    engine = EmbeddedEngine(FERRETDB_BIN, work, backend="postgresql")
    uri = engine.start()
    server = None
    try:
        server = start_server(uri, {"FHIR_INSECURE_DEV_MODE": "true", "FHIR_WORKERS": "1",
                                    "FHIR_EXPORT_POLL_SECONDS": "0.2", "FHIR_LOG_LEVEL": "WARNING"})
        with server.client(timeout=300) as c:
            pid = load(c, args.resources)
            rounds, whole = [], []
            for _ in range(args.rounds):  # the same documents as the raw reads
                r = export_once(c, server.process.pid, pid, "Patient,Consent,DocumentReference")
                r["job_seconds"] = job_seconds(uri, server.database, r.pop("status_url"))
                rounds.append(r)
            for _ in range(args.rounds):  # the whole compartment: the record's audit trail too
                r = export_once(c, server.process.pid, pid, None)
                r["job_seconds"] = job_seconds(uri, server.database, r.pop("status_url"))
                whole.append(r)
        raws = [raw_once(uri, server.database, pid, work) for _ in range(args.rounds)]
    finally:
        if server is not None:
            stop_server(server)
        engine.stop()
    med = lambda rows, key: statistics.median(x[key] for x in rows)  # noqa: E731
    result = {"resources": args.resources, "export": rounds, "export_with_audit_trail": whole, "raw": raws,
              "median": {"end_to_end_s": med(rounds, "seconds_end_to_end"), "job_s": med(rounds, "job_seconds"),
                         "server_peak_rss_mb": round(med(rounds, "peak_rss_kb") / 1024, 1),
                         "server_rss_before_mb": round(med(rounds, "rss_before_kb") / 1024, 1),
                         "whole_lines": med(whole, "lines"), "whole_job_s": med(whole, "job_seconds"),
                         "whole_peak_rss_mb": round(med(whole, "peak_rss_kb") / 1024, 1),
                         "raw_s": med(raws, "seconds"), "raw_paged_s": med(raws, "paged_seconds"), "raw_peak_rss_mb": round(med(raws, "peak_rss_kb") / 1024, 1)},
              "machine": machine()}
    print(json.dumps(result, indent=2))
    m = result["median"]
    print(f"\n| {args.resources} resources | time (s) | peak RSS (MB) |\n|---|---|---|\n"
          f"| $export, end to end (kick-off, polls, downloads) | {m['end_to_end_s']} | {m['server_peak_rss_mb']} "
          f"(server; {m['server_rss_before_mb']} before) |\n"
          f"| $export job (created → finished) | {m['job_s']} | |\n"
          f"| $export of the whole compartment ({m['whole_lines']} lines: + the record's AuditEvents), job | "
          f"{m['whole_job_s']} | {m['whole_peak_rss_mb']} (server) |\n"
          f"| raw driver: find + write lines | {m['raw_s']} | {m['raw_peak_rss_mb']} (its process) |\n"
          f"| raw driver, the export's query shape (pages of 500, keyset on _id, lastUpdated bound) | "
          f"{m['raw_paged_s']} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
