"""What destroying a record costs: `POST Patient/{id}/$destroy` on a closed record of 2,000
resources, against the raw driver deleting the same documents (the embedded default: FerretDB on
PostgreSQL, one server, insecure dev mode so no token is involved).

The record: its Patient and record Consent, 1,500 DocumentReferences (500 of them updated once:
two versions), 400 Binaries (50 over the test inline limit, so in GridFS) and 98 Lists. Each
round loads two such records with batch Bundles, closes both, then times
* the server: `$destroy` (plan with the SHA-256 of every version, markers, deletes of current and
  history documents, GridFS files, the INS claim, auth traces, the signed receipt in the audit
  trail), as the client sees it;
* the raw driver (PyMongo): find the record's ids through the same index fields, `delete_many`
  the current and history documents by id, delete the GridFS files and the INS claim — the floor.

    .venv/bin/python bench/destruction.py [--rounds 3] [--docs 1500]

Only 127.0.0.1 is contacted; the run stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from gridfs import GridFSBucket
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_server.engine.embedded import EmbeddedEngine  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402
from tests.dmp import document, record_consent  # noqa: E402
from tests.helpers import new_ins  # noqa: E402

FHIR = {"Content-Type": "application/fhir+json"}
ABOUT = {"DocumentReference": "r_subject", "Binary": "r_securitycontext", "List": "r_subject", "Consent": "r_patient"}


def load(c: httpx.Client, docs: int) -> tuple[str, str, int]:
    """A closed record of docs + 400 + 98 + 2 resources; (patient id, its INS, resources)."""
    ins = new_ins()
    r = c.post("/Patient", json={"resourceType": "Patient", "identifier": [
        {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": ins}]}, headers=FHIR)
    pid = r.json()["id"]
    consent = c.post("/Consent", json=record_consent(pid), headers=FHIR).json()["id"]
    small, large = base64.b64encode(b"x" * 200).decode(), base64.b64encode(b"y" * 8192).decode()
    resources = [document(pid, description=f"note {i}") for i in range(docs)]
    resources += [{"resourceType": "Binary", "contentType": "application/pdf", "data": large if i < 50 else small,
                   "securityContext": {"reference": f"Patient/{pid}"}} for i in range(400)]
    resources += [{"resourceType": "List", "status": "current", "mode": "working",
                   "subject": {"reference": f"Patient/{pid}"}} for _ in range(98)]
    created: list[str] = []
    for i in range(0, len(resources), 500):
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "POST", "url": x["resourceType"]}, "resource": x} for x in resources[i:i + 500]]}
        out = c.post("", json=bundle, headers=FHIR).json()
        created += [e["response"]["location"] for e in out["entry"]]
    updates = [loc.split("/_history")[0] for loc in created if loc.startswith("DocumentReference/")][:docs // 3]
    for i in range(0, len(updates), 500):
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "PUT", "url": u}, "resource": {**document(pid, description="changed"),
                                                                   "id": u.split("/")[1]}} for u in updates[i:i + 500]]}
        c.post("", json=bundle, headers=FHIR)
    closed = {**record_consent(pid, status="inactive"), "id": consent}
    assert c.put(f"/Consent/{consent}", json=closed, headers=FHIR).status_code == 200
    return pid, ins, 2 + len(resources)


def raw_delete(db, pid: str, ins: str) -> None:
    ref = f"Patient/{pid}"
    bucket = GridFSBucket(db, bucket_name="binary_content")
    targets = {t: [d["_id"] for d in db[t].find({f: ref}, {"_id": 1})] for t, f in ABOUT.items()}
    targets["Patient"] = [pid]
    for t, ids in targets.items():
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            files = [d["_bin"] for d in db[f"{t}_history"].find({"_rid": {"$in": part}, "_bin": {"$exists": True}},
                                                                {"_bin": 1})]
            db[t].delete_many({"_id": {"$in": part}})
            db[f"{t}_history"].delete_many({"_rid": {"$in": part}})
            for f in files:
                bucket.delete(f)
    db["_unique_keys"].delete_many({"owner": ref})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--docs", type=int, default=1500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = EmbeddedEngine(FERRETDB_BIN, Path(tmp), backend="postgresql")
        uri = engine.start()
        server = start_server(uri, {"FHIR_DESTRUCTION_GRACE_SECONDS": "0", "FHIR_LOG_LEVEL": "ERROR"})
        mongo = MongoClient(uri)
        db = mongo[server.database]
        server_s, raw_s = [], []
        try:
            with server.client(timeout=600) as c:
                for _ in range(args.rounds):
                    a, _, n = load(c, args.docs)
                    b, ins_b, _ = load(c, args.docs)
                    t0 = time.perf_counter()
                    r = c.post(f"/Patient/{a}/$destroy", params={"reason": "benchmark"})
                    server_s.append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                    t0 = time.perf_counter()
                    raw_delete(db, b, ins_b)
                    raw_s.append(time.perf_counter() - t0)
                    print(json.dumps({"resources": n, "server_s": round(server_s[-1], 3),
                                      "raw_s": round(raw_s[-1], 3)}), flush=True)
        finally:
            mongo.close()
            stop_server(server)
            engine.stop()
    result = {"resources": n, "rounds": args.rounds, "server_median_s": round(statistics.median(server_s), 3),
              "raw_median_s": round(statistics.median(raw_s), 3),
              "ratio": round(statistics.median(server_s) / statistics.median(raw_s), 2),
              "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
