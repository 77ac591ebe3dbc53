"""/health, /ready, /metrics and the CLI's `check`."""

import json
import os
import subprocess
import sys


def test_health_ready_metrics(server, fhir):
    import httpx

    from tests.conftest import TEST_METRICS_TOKEN

    with httpx.Client(base_url=server.base) as c:
        assert c.get("/health").json() == {"status": "ok"}
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["engine"] == "ferretdb"
        fhir.get("/metadata")
        metrics = c.get("/metrics", headers={"Authorization": f"Bearer {TEST_METRICS_TOKEN}"}).text
        assert 'fhir_requests_total{interaction="capabilities",method="GET",status="200"}' in metrics
        assert "fhir_request_seconds_bucket" in metrics


def test_check_prints_config_without_secrets(ferretdb_uri):
    secret_uri = ferretdb_uri.replace("mongodb://", "mongodb://admin:s3cr3t-pw@")
    env = {**os.environ, "FHIR_MONGODB_URI": secret_uri}
    out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "check"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "s3cr3t-pw" not in out.stdout
    report = json.loads(out.stdout)
    assert report["settings"]["mongodb_uri"].startswith("mongodb://***@")
    assert "engine" in report and "transactions" in report["engine"] or "error" in report["engine"]


def test_check_reports_engine_capabilities(ferretdb_uri):
    env = {**os.environ, "FHIR_MONGODB_URI": ferretdb_uri}
    out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "check"], env=env, capture_output=True, text=True,
                         timeout=60)
    engine = json.loads(out.stdout)["engine"]
    assert engine["name"] == "ferretdb" and engine["transactions"] is False


def test_logs_carry_no_patient_data(ferretdb_uri, tmp_path):
    """Run a server, create a patient with a distinctive name, and check the log lines never contain it."""
    from tests.conftest import start_server

    env_log = tmp_path / "server.log"
    with open(env_log, "w") as log:
        server = start_server(ferretdb_uri, {"FHIR_LOG_LEVEL": "INFO"}, stderr=log)
        try:
            with server.client() as c:
                c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Zyxwvutsrq"}]},
                       headers={"Content-Type": "application/fhir+json"})
                c.get("/Patient", params={"name": "Zyxwvutsrq"})
                c.post("/Patient", content=b'{"resourceType":"Patient","name":[{"family":"Qwertzuiop"}],"gender":"robot"}',
                       headers={"Content-Type": "application/fhir+json"})
        finally:
            from tests.conftest import stop_server

            stop_server(server)
    text = env_log.read_text()
    assert '"interaction": "create"' in text  # the requests were logged
    assert "Zyxwvutsrq" not in text and "Qwertzuiop" not in text


def test_reindex_restores_search_fields(server, fhir):
    """Index fields wiped behind the server's back are rebuilt by `fhir-server reindex`."""
    from pymongo import MongoClient

    created = fhir.post("/Organization", json={"resourceType": "Organization", "name": "Qzréindex Clinique Œ"},
                        headers={"Content-Type": "application/fhir+json"}).json()
    with MongoClient(server.mongodb_uri) as mc:
        mc[server.database]["Organization"].update_one({"_id": created["id"]}, {"$unset": {"s_name": "", "p_name": ""}})
    for name in ("qzreindex clinique", "QZRÉIN"):  # longer and shorter than the prefix tokens
        assert fhir.get("/Organization", params={"name": name}).json()["total"] == 0
    env = {**os.environ, "FHIR_MONGODB_URI": server.mongodb_uri, "FHIR_DATABASE": server.database}
    out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "reindex", "--type", "Organization"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Organization:" in out.stdout
    for name in ("qzreindex clinique", "QZRÉIN"):
        found = fhir.get("/Organization", params={"name": name}).json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [created["id"]]
