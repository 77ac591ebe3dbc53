"""What the first request of each resource type costs a freshly started server, against the later
ones: fhir.resources imports a type's models when they are first needed, and that import runs on
the event loop of the request that needs it (every other request of the worker waits). Reported
per type: the first create's latency, the median of the next `--repeat`, and the time from start
to ready. Fresh servers (`--starts`) on one engine; only 127.0.0.1 is contacted.

Compare two commits by running this file from each (docs/benchmarks.md, "Sixth pass").

    .venv/bin/python bench/first_use.py [--starts 3] [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from fhir_server.engine.ferretdb import EmbeddedFerretDB  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402
from tests.dmp import authorization, record_consent  # noqa: E402

FHIR = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"


def _bodies(pid: str, practitioner: str) -> dict[str, dict]:
    """One ordinary instance per type, with the elements such resources usually carry."""
    subject = {"reference": f"Patient/{pid}"}
    author = {"reference": f"Practitioner/{practitioner}"}
    return {
        "Organization": {"name": "Centre hospitalier", "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2",
                                                                       "value": "1750000001"}],
                         "telecom": [{"system": "phone", "value": "0100000000"}],
                         "address": [{"city": "Paris", "postalCode": "75001"}]},
        "PractitionerRole": {"practitioner": author, "code": [{"coding": [{"system": "urn:oid:1.2.250.1.71.1.2.7",
                                                                          "code": "10"}]}],
                             "period": {"start": "2020-01-01"}},
        "DocumentReference": {"status": "current", "subject": subject, "author": [author],
                              "date": "2024-05-01T10:00:00+02:00",
                              "type": {"coding": [{"system": LOINC, "code": "11488-4"}]},
                              "category": [{"coding": [{"system": LOINC, "code": "11488-4"}]}],
                              "content": [{"attachment": {"contentType": "text/plain", "data": "Y29tcHRlIHJlbmR1",
                                                          "title": "Compte rendu"}}],
                              "context": {"period": {"start": "2024-05-01"}}},
        "List": {"status": "current", "mode": "working", "subject": subject, "title": "Traitements",
                 "entry": [{"item": author}]},
        "Consent": authorization(pid, [f"Practitioner/{practitioner}"], actions=("read",)),
        "Provenance": {"target": [subject], "recorded": "2024-05-01T10:00:00+02:00",
                       "agent": [{"who": author}]},
        "Binary": {"contentType": "text/plain", "data": "Y29tcHRlIHJlbmR1"},
        "AuditEvent": {"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
                       "recorded": "2024-05-01T10:00:00+02:00", "agent": [{"who": author, "requestor": True}],
                       "source": {"observer": {"display": "EHR"}}, "action": "R", "outcome": "0",
                       "entity": [{"what": subject}]},
    }


def one_start(uri: str, repeat: int) -> dict:
    started = time.perf_counter()
    server = start_server(uri)
    out: dict = {"start_to_ready_ms": 1e3 * (time.perf_counter() - started), "types": {}}
    try:
        with httpx.Client(timeout=60) as c:
            def create(rtype: str, body: dict) -> float:
                t = time.perf_counter()
                r = c.post(f"{server.fhir_base}/{rtype}", json={"resourceType": rtype, **body}, headers=FHIR)
                elapsed = time.perf_counter() - t
                assert r.status_code == 201, f"{rtype}: {r.status_code} {r.text[:300]}"
                return elapsed

            # the Patient and Practitioner the others refer to are the first two types measured
            t = time.perf_counter()
            r = c.post(server.fhir_base + "/Patient", json={"resourceType": "Patient", "name": [{"family": "Dupont",
                                                                                                   "given": ["Jean"]}],
                                                              "birthDate": "1970-01-01", "gender": "male"}, headers=FHIR)
            first = {"Patient": time.perf_counter() - t}
            pid = r.json()["id"]
            first["Practitioner"] = create("Practitioner", {"name": [{"family": "Martin"}], "identifier": [
                {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810000000009"}]})
            practitioner = c.get(server.fhir_base + "/Practitioner", params={"_count": "1"}).json()["entry"][0]["resource"]["id"]
            assert c.post(server.fhir_base + "/Consent", json=record_consent(pid), headers=FHIR).status_code == 201
            bodies = _bodies(pid, practitioner)
            for rtype, body in bodies.items():
                first[rtype] = create(rtype, body)
            for rtype, body in [("Patient", {"name": [{"family": "Durand"}]}),
                                ("Practitioner", {"name": [{"family": "Petit"}]}), *bodies.items()]:
                later = [create(rtype, body) for _ in range(repeat)]
                out["types"][rtype] = {"first_ms": 1e3 * first[rtype], "later_median_ms": 1e3 * statistics.median(later)}
    finally:
        stop_server(server)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=3, help="fresh servers, one after the other")
    ap.add_argument("--repeat", type=int, default=10, help="later creates of each type, for their median")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="first-use-bench-"))
    engine = EmbeddedFerretDB(FERRETDB_BIN, work / "ferretdb")
    uri = engine.start()
    try:
        runs = [one_start(uri, args.repeat) for _ in range(args.starts)]
    finally:
        engine.stop()
    types = list(runs[0]["types"])
    summary = {t: {"first_ms": round(statistics.median(r["types"][t]["first_ms"] for r in runs), 1),
                   "later_median_ms": round(statistics.median(r["types"][t]["later_median_ms"] for r in runs), 1)}
               for t in types}
    result = {"starts": args.starts, "repeat": args.repeat,
              "start_to_ready_ms": [round(r["start_to_ready_ms"]) for r in runs], "per_type_median_of_starts": summary,
              "first_minus_later_total_ms": round(sum(s["first_ms"] - s["later_median_ms"] for s in summary.values()), 1),
              "machine": machine()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
