"""What atomicity costs: the same 100 POST entries as a batch Bundle and as a transaction Bundle,
interleaved in one run on one server, on the embedded engine (FerretDB/SQLite, application-level
commit protocol) and on mongoeco (native transactions) when available.

Issue 8's target: a 100-entry transaction commits within 3× the time of the same entries as a
batch. Only 127.0.0.1 is contacted.

    .venv/bin/python bench/transaction.py [--rounds 10] [--entries 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_server.engine.ferretdb import EmbeddedFerretDB  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402

FHIR = {"Content-Type": "application/fhir+json"}


def bundle(kind: str, n: int) -> dict:
    entries = []
    for i in range(n):
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Patient"},
                        "resource": {"resourceType": "Patient", "gender": "female", "birthDate": "1980-01-01",
                                     "name": [{"family": f"Dupont{i}", "given": ["Hélène"]}],
                                     "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                     "value": f"{uuid.uuid4().int % 10**15:015d}"}]}})
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def measure(uri: str, rounds: int, entries: int) -> dict:
    server = start_server(uri, {"FHIR_INSECURE_DEV_MODE": "true", "FHIR_MAX_BODY_BYTES": str(64 * 1024 * 1024)})
    times: dict[str, list[float]] = {"batch": [], "transaction": []}
    try:
        with httpx.Client(base_url=server.fhir_base, timeout=300) as c:
            for kind in times:  # warm-up
                assert c.post("", json=bundle(kind, 10), headers=FHIR).status_code == 200
            for r in range(rounds):
                for kind in (("batch", "transaction") if r % 2 == 0 else ("transaction", "batch")):
                    body = bundle(kind, entries)
                    t = time.perf_counter()
                    resp = c.post("", json=body, headers=FHIR)
                    times[kind].append(time.perf_counter() - t)
                    assert resp.status_code == 200, resp.text[:300]
                    assert all(e["response"]["status"] == "201" for e in resp.json()["entry"])
    finally:
        stop_server(server)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": {k: round(v, 3) for k, v in med.items()},
            "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "transaction_over_batch": round(med["transaction"] / med["batch"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--entries", type=int, default=100)
    ap.add_argument("--mongoeco-python", default=str(ROOT / ".tools" / "mongoeco-venv" / "bin" / "python"))
    a = ap.parse_args()
    report: dict = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
                    "entries": a.entries, "rounds": a.rounds}
    work = Path(tempfile.mkdtemp(prefix="txn-bench-"))
    engine = EmbeddedFerretDB(FERRETDB_BIN, work / "ferretdb")
    try:
        report["ferretdb-sqlite (application-level commit)"] = measure(engine.start(), a.rounds, a.entries)
    finally:
        engine.stop()
    if Path(a.mongoeco_python).exists():
        import subprocess

        proc = subprocess.Popen([a.mongoeco_python, str(ROOT / "tests" / "engines" / "mongoeco_wire.py"),
                                 "--watch-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            uri = proc.stdout.readline().strip()
            report["mongoeco (native transactions)"] = measure(uri, a.rounds, a.entries)
        finally:
            proc.stdin.close()
            proc.wait(timeout=15)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
