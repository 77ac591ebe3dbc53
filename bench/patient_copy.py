"""The patient's copy (`Patient/{id}/$copy`, issue 11 item 3) of a large record: time, and the
server's peak memory while it builds and sends the ZIP, against the raw driver reading the same
documents and GridFS contents. Also `Patient/{id}/$everything` of that record paged at 100: p50
per page, against the raw driver reading the same pages (issue 11, performance).

Dataset: one patient, `--documents` DocumentReferences (small inline text attachments) and
`--big` of them pointing at Binaries of `--big-mb` MB each, stored in GridFS (default 40 x 5 MB =
200 MB). The peak resident memory of the server process (VmHWM, reset through
/proc/PID/clear_refs just before the copy) shows whether memory grows with the record.

    .venv/bin/python bench/patient_copy.py [--documents 2000] [--big 40] [--big-mb 5]

The default engine (FerretDB on a private PostgreSQL cluster); only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
from gridfs import GridFSBucket
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from fhir_server.engine.embedded import EmbeddedEngine  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402

FHIR = {"Content-Type": "application/fhir+json"}


def rss_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def load(c: httpx.Client, documents: int, big: int, big_mb: int) -> tuple[str, list[str]]:
    pid = c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Copie"}]}, headers=FHIR).json()["id"]
    binaries = []
    for i in range(big):
        data = os.urandom(big_mb << 20)
        r = c.post("/Binary", content=data, headers={"Content-Type": "application/pdf",
                                                       "X-Security-Context": f"Patient/{pid}"})
        assert r.status_code == 201, r.text[:300]
        binaries.append(r.json()["id"])
    text = base64.b64encode(b"Compte rendu " * 40).decode()
    for start in range(0, documents, 100):
        entries = []
        for i in range(start, min(start + 100, documents)):
            att = ({"contentType": "application/pdf", "url": f"Binary/{binaries[i]}", "title": f"imagerie-{i}.pdf"}
                   if i < big else {"contentType": "text/plain", "data": text, "title": f"note-{i}.txt"})
            entries.append({"request": {"method": "POST", "url": "DocumentReference"}, "resource": {
                "resourceType": "DocumentReference", "status": "current", "date": f"2026-01-{1 + i % 28:02d}T10:00:00Z",
                "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
                "subject": {"reference": f"Patient/{pid}"}, "content": [{"attachment": att}]}})
        r = c.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=FHIR)
        assert r.status_code == 200, r.text[:300]
    return pid, binaries


def raw_driver(uri: str, database: str, pid: str) -> float:
    """The same documents and contents read straight through PyMongo and GridFS."""
    t = time.perf_counter()
    with MongoClient(uri) as client:
        db = client[database]
        docs = list(db["DocumentReference"].find({"r_subject": f"Patient/{pid}"}, projection={"_json": 1}))
        binaries = list(db["Binary"].find({"r_securitycontext": f"Patient/{pid}"}))
        bucket = GridFSBucket(db, bucket_name="binary_content")
        total = 0
        for b in binaries:
            if b.get("_bin") is not None:
                with bucket.open_download_stream(b["_bin"]) as f:
                    while chunk := f.read(1 << 18):
                        total += len(chunk)
        list(db["Patient"].find({"_id": pid}))
    assert docs and total
    return time.perf_counter() - t


def everything_pages(c: httpx.Client, uri: str, database: str, pid: str) -> dict:
    """Walk `$everything` at `_count=100` (three times, after one warm-up walk) and the same pages
    through PyMongo (each compartment type by `_id`, 100 at a time)."""
    import statistics

    def walk() -> list[float]:
        times, url, params = [], f"/Patient/{pid}/$everything", {"_count": "100"}
        while url:
            t = time.perf_counter()
            r = c.get(url, params=params)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text[:300]
            nxt = [link["url"] for link in r.json()["link"] if link["relation"] == "next"]
            url, params = (nxt[0], None) if nxt else (None, None)
        return times

    walk()
    server = [t for _ in range(3) for t in walk()]
    driver = []
    from fhir_server.access.compartment import in_compartment_types
    from fhir_server.access.filters import patient_compartment_filter
    from fhir_server.storage.repository import flatten

    types = ["Patient", *sorted(t for t in in_compartment_types() if t != "Patient")]
    with MongoClient(uri) as client:
        db = client[database]
        for _ in range(3):  # the same compartment, type by type, pages of 100 by _id
            for rtype in types:
                flt = patient_compartment_filter(rtype, pid)
                if not flt or rtype not in db.list_collection_names():
                    continue
                last = None
                while True:
                    t = time.perf_counter()
                    query = flatten({"$and": [flt, {"_id": {"$gt": last}}]} if last else flt)
                    page = list(db[rtype].find(query, projection={"_json": 1}, sort=[("_id", 1)], limit=100))
                    driver.append(time.perf_counter() - t)
                    if len(page) < 100:
                        break
                    last = page[-1]["_id"]
    return {"pages_per_walk": len(server) // 3, "p50_page_ms": round(statistics.median(server) * 1000, 1),
            "raw_driver_p50_page_ms": round(statistics.median(driver) * 1000, 1),
            "ratio": round(statistics.median(server) / statistics.median(driver), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--documents", type=int, default=2000)
    ap.add_argument("--big", type=int, default=40)
    ap.add_argument("--big-mb", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="copy-bench-"))
    engine = EmbeddedEngine(FERRETDB_BIN, work, backend="postgresql")
    uri = engine.start()
    database = "copy_bench"
    server = start_server(uri, {"FHIR_DATABASE": database, "FHIR_MAX_BODY_BYTES": str((args.big_mb + 1) << 20),
                                "FHIR_LOG_LEVEL": "WARNING"})
    server.database = database
    result: dict = {}
    try:
        with httpx.Client(base_url=server.fhir_base, timeout=600) as c:
            t = time.perf_counter()
            pid, _ = load(c, args.documents, args.big, args.big_mb)
            result["load_seconds"] = round(time.perf_counter() - t, 1)
            result["everything"] = everything_pages(c, uri, database, pid)
            proc = server.process.pid
            result["rss_before_mb"] = round(rss_kb(proc, "VmRSS") / 1024, 1)
            Path(f"/proc/{proc}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
            out = work / "copy.zip"
            t = time.perf_counter()
            with c.stream("GET", f"/Patient/{pid}/$copy") as r, out.open("wb") as f:
                assert r.status_code == 200, r.read()[:300]
                first = None
                for chunk in r.iter_bytes(1 << 16):
                    first = first or time.perf_counter()
                    f.write(chunk)
            result["copy_seconds"] = round(time.perf_counter() - t, 2)
            result["time_to_first_byte_seconds"] = round((first or t) - t, 2)
            result["peak_rss_during_copy_mb"] = round(rss_kb(proc, "VmHWM") / 1024, 1)
            result["zip_mb"] = round(out.stat().st_size / (1 << 20), 1)
            with zipfile.ZipFile(out) as z:
                result["files"] = len(z.namelist())
                result["documents_files"] = sum(1 for n in z.namelist() if n.startswith("documents/"))
        result["raw_driver_seconds"] = round(raw_driver(uri, database, pid), 2)
        result["ratio_copy_vs_raw_driver"] = round(result["copy_seconds"] / result["raw_driver_seconds"], 2)
    finally:
        stop_server(server)
        engine.stop()
    result["dataset"] = {"documents": args.documents, "big_binaries": args.big, "big_mb": args.big_mb,
                         "attachments_mb": args.big * args.big_mb}
    result["machine"] = machine()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
