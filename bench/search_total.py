"""What a search's `total` costs: the same patient-document search with the default total and
with `_total=none`, interleaved on one server over FerretDB/SQLite (3,000 DocumentReferences of
300 patients, 10 per patient). Only 127.0.0.1 is contacted.

    .venv/bin/python bench/search_total.py
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from fhir_server.engine.ferretdb import EmbeddedFerretDB  # noqa: E402
from tests.conftest import FERRETDB_BIN, start_server, stop_server  # noqa: E402

FHIR = {"Content-Type": "application/fhir+json"}


def _document(patient: str) -> dict:
    return {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{patient}"},
            "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]}, "date": "2026-01-01T00:00:00Z",
            "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}]}


def main() -> None:
    engine = EmbeddedFerretDB(FERRETDB_BIN, Path(tempfile.mkdtemp()) / "ferretdb")
    uri = engine.start()
    server = start_server(uri, {"FHIR_INSECURE_DEV_MODE": "true", "FHIR_MAX_BODY_BYTES": str(64 << 20)})
    try:
        with httpx.Client(base_url=server.fhir_base, timeout=300) as c:
            patients = [c.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
                        for _ in range(300)]
            for b in range(30):
                entries = [{"request": {"method": "POST", "url": "DocumentReference"},
                            "resource": _document(patients[(b * 100 + i) % 300])} for i in range(100)]
                batch = {"resourceType": "Bundle", "type": "batch", "entry": entries}
                assert c.post("", json=batch, headers=FHIR).status_code == 200
            for mode in ["default", "none", "default", "none"]:
                times = []
                for i in range(60):
                    params = {"subject": f"Patient/{patients[i % 300]}", "type": "http://loinc.org|11488-4",
                              "_sort": "-date"}
                    if mode == "none":
                        params["_total"] = "none"
                    started = time.perf_counter()
                    r = c.get("/DocumentReference", params=params)
                    times.append(time.perf_counter() - started)
                    assert r.status_code == 200 and len(r.json()["entry"]) == 10
                print(mode, round(statistics.median(times) * 1000, 1), "ms p50")
    finally:
        stop_server(server)
        engine.stop()


if __name__ == "__main__":
    main()
