"""Bulk Data export v2 (https://hl7.org/fhir/uv/bulkdata/export.html) from the client's side:
kick-off, polling on the server's own Retry-After, the manifest, each NDJSON file (every line parses
and validates as its type), compared with an oracle per caller: what that caller finds by paging
searches of each exported type, as of the manifest's transactionTime. Plus ownership (404 for
others), cancel, bad parameters, expiry, audit of downloads, and jobs that survive a restart and a
crash between two files."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from tests.auth_helpers import add_client, backend_token, public_jwks, rsa_key
from tests.conftest import start_server, stop_server
from tests.helpers import new_ins

FHIR = {"Content-Type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
COMPARTMENT = ("Patient", "AuditEvent", "Binary", "Consent", "DocumentReference", "List", "Provenance")
MAX_POLLS = 120


@pytest.fixture(scope="module")
def w(consent_world):
    w = consent_world
    for name, operator, org in (("bulk-ops", True, None), ("bulk-org", False, f"Organization/{w.org_o}")):
        key = rsa_key()
        add_client(w.server, name, "confidential-asymmetric", "system/*.rs", redirect_uris=(),
                   jwks=public_jwks(key), operator=operator, organization=org)
        w.tokens[name] = backend_token(w.server, name, key, "system/*.rs")["access_token"]
    return w


def kickoff(c, path: str, **params):
    return c.get(path, params=params, headers=ASYNC)


def wait(c, status_url: str):
    """Poll the status URL, waiting what the server's Retry-After says, a bounded number of times."""
    for _ in range(MAX_POLLS):
        r = c.get(status_url)
        if r.status_code != 202:
            return r
        assert r.headers["X-Progress"]
        time.sleep(float(r.headers["Retry-After"]))
    raise AssertionError("the export did not finish")


def run_export(c, path: str, **params) -> tuple[dict, dict[str, list[dict]]]:
    """Kick off, wait, download every file: (manifest, type -> resources)."""
    r = kickoff(c, path, **params)
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    r = wait(c, status_url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    manifest = r.json()
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith(path) or f"{path}?" in manifest["request"]
    datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    out: dict[str, list[dict]] = {}
    for item in manifest["output"]:
        f = c.get(item["url"], headers={"Accept": "application/fhir+ndjson"})
        assert f.status_code == 200, f.text
        assert f.headers["content-type"].startswith("application/fhir+ndjson")
        lines = f.content.decode().splitlines()
        assert len(lines) == item["count"] > 0
        for line in lines:
            resource = orjson.loads(line)
            assert resource["resourceType"] == item["type"]
            get_fhir_model_class(item["type"]).model_validate(resource)  # valid FHIR R4B of its type
            out.setdefault(item["type"], []).append(resource)
    manifest["status_url"] = status_url
    return manifest, out


def keys(out: dict[str, list[dict]]) -> list[str]:
    return [f"{t}/{r['id']}" for t, rs in out.items() for r in rs]


def searched(c, types, until: str, compartment: str | None = None, in_some_compartment=False) -> set[str]:
    """The oracle: what this caller finds by paging searches of each type, as of `until`."""
    found = set()
    for t in types:
        url = f"/Patient/{compartment}/{t}" if compartment else f"/{t}"
        params: dict | None = {"_count": 1000, "_lastUpdated": f"le{until}"}
        while url:
            r = c.get(url, params=params)
            if r.status_code == 403:
                break  # the caller may not search this type: nothing of it
            assert r.status_code == 200, r.text
            bundle = r.json()
            for e in bundle.get("entry", []):
                if e.get("search", {}).get("mode", "match") != "match":
                    continue
                res = e["resource"]
                if in_some_compartment and not _in_some_compartment(res):
                    continue
                found.add(f"{res['resourceType']}/{res['id']}")
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            url, params = (nxt[0].split("/fhir", 1)[1], None) if nxt else (None, None)
    return found


def _in_some_compartment(r: dict) -> bool:
    """R4 Patient CompartmentDefinition (+ Binary.securityContext), for any patient."""
    refs = {"Patient": [{"reference": "Patient/x"}], "DocumentReference": [r.get("subject"), *r.get("author", [])],
            "Consent": [r.get("patient")], "Binary": [r.get("securityContext")],
            "List": [r.get("subject"), r.get("source")], "Provenance": r.get("target", []),
            "AuditEvent": [a.get("who") for a in r.get("agent", [])] + [e.get("what") for e in r.get("entity", [])]}
    return any(isinstance(x, dict) and str(x.get("reference", "")).startswith("Patient/")
               for x in refs.get(r["resourceType"], []))


# --- who gets what ----------------------------------------------------------------------------------

def test_backend_system_export_is_what_it_can_search(w):
    types = ["Patient", "Practitioner", "Organization", "Consent", "DocumentReference", "Binary"]
    with w.client("bulk-ops") as c:
        manifest, out = run_export(c, "/$export", _type=",".join(types))
        got = keys(out)
        assert len(got) == len(set(got))
        assert set(got) == searched(c, types, manifest["transactionTime"])
        assert f"DocumentReference/{w.masked_a}" in got and f"Practitioner/{w.pr_auth}" in got  # an operator


def test_organization_client_patient_export_is_what_consent_lets_it_search(w):
    types = ["Patient", "DocumentReference", "Consent"]
    with w.client("bulk-org") as c:
        manifest, out = run_export(c, "/Patient/$export", _type=",".join(types))
        got = set(keys(out))
        assert got == searched(c, types, manifest["transactionTime"], in_some_compartment=True)
    assert f"DocumentReference/{w.doc_a}" in got  # Alice authorized Organization O to read
    assert f"DocumentReference/{w.doc_b}" not in got and f"Patient/{w.b}" not in got  # Bob did not


def test_patient_exports_her_own_record(w):
    with w.client("alice") as c:
        manifest, out = run_export(c, f"/Patient/{w.a}/$export")
        got = keys(out)
        oracle = set()
        for t in COMPARTMENT:
            oracle |= searched(c, [t], manifest["transactionTime"], compartment=w.a)
    assert len(got) == len(set(got)) and set(got) == oracle
    assert f"DocumentReference/{w.own_a}" in got and f"Binary/{w.bin_a}" in got
    assert f"DocumentReference/{w.hidden_a}" not in got  # hidden from her until announced
    assert any(r["id"] == w.bin_a and r.get("data") for r in out["Binary"])


def test_authorized_professional_export_and_the_blocked_one(w):
    with w.client("auth") as c:
        manifest, out = run_export(c, f"/Patient/{w.a}/$export", _type="Patient,DocumentReference",
                                   _outputFormat="application/fhir+ndjson")
        oracle = searched(c, ["Patient", "DocumentReference"], manifest["transactionTime"], compartment=w.a)
    assert set(keys(out)) == oracle and f"DocumentReference/{w.doc_a}" in oracle
    assert f"DocumentReference/{w.masked_a}" not in oracle  # masked: not their document
    with w.client("blocked") as c:
        r = kickoff(c, f"/Patient/{w.a}/$export")
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"  # as if she did not exist
        manifest, out = run_export(c, "/Patient/$export", _type="Patient,DocumentReference")
        assert set(keys(out)) == searched(c, ["Patient", "DocumentReference"], manifest["transactionTime"],
                                          in_some_compartment=True)
        assert not any(r["id"] == w.a or r.get("subject", {}).get("reference") == f"Patient/{w.a}"
                       for rs in out.values() for r in rs)


# --- ownership, cancel, parameters, audit -------------------------------------------------------------

def test_only_the_principal_who_kicked_off_reaches_the_job(w):
    with w.client("auth") as c:
        manifest, _ = run_export(c, f"/Patient/{w.a}/$export", _type="DocumentReference")
    status_url, file_url = manifest["status_url"], manifest["output"][0]["url"]
    for other in ("gp", "alice", "bulk-ops"):
        with w.client(other) as c:
            for r in (c.get(status_url), c.get(file_url), c.delete(status_url)):
                assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    with w.client("auth") as c:  # still there for its owner
        assert c.get(file_url).status_code == 200


def test_cancel_deletes_the_job_and_its_files(w):
    with w.client("alice") as c:
        manifest, _ = run_export(c, f"/Patient/{w.a}/$export", _type="DocumentReference")
        status_url, file_url = manifest["status_url"], manifest["output"][0]["url"]
        assert c.delete(status_url).status_code == 202
        assert c.get(status_url).status_code == 404
        assert c.get(file_url).status_code == 404
        r = kickoff(c, f"/Patient/{w.a}/$export")  # cancel while queued or running
        assert r.status_code == 202
        assert c.delete(r.headers["Content-Location"]).status_code == 202
        assert c.get(r.headers["Content-Location"]).status_code == 404


@pytest.mark.parametrize("path,params,headers,status", [
    ("/Patient/{a}/$export", {}, {"Accept": "application/fhir+json"}, 400),  # no Prefer: respond-async
    ("/Patient/{a}/$export", {"_outputFormat": "text/csv"}, ASYNC, 400),
    ("/Patient/{a}/$export", {"_typeFilter": "DocumentReference?status=current"},
     {**ASYNC, "Prefer": "respond-async, handling=strict"}, 400),
    ("/Patient/{a}/$export", {"_type": "Nope"}, ASYNC, 400),
    ("/Patient/{a}/$export", {"_type": "Practitioner"}, ASYNC, 400),  # not in the compartment
    ("/Patient/{a}/$export", {"_since": "yesterday"}, ASYNC, 400),
    ("/Patient/{a}/$export", {"_typeFilter": "DocumentReference?status=current"}, ASYNC, 202),  # lenient: ignored
    ("/Patient/{a}/$export", {"_outputFormat": "ndjson"}, ASYNC, 202),
    ("/DocumentReference/$export", {}, ASYNC, 404),
])
def test_kickoff_parameters(w, path, params, headers, status):
    with w.client("alice") as c:
        r = c.get(path.format(a=w.a), params=params, headers=headers)
        assert r.status_code == status, r.text
        if status == 202:
            assert c.delete(r.headers["Content-Location"]).status_code == 202
        else:
            assert r.json()["resourceType"] == "OperationOutcome"


def test_a_download_is_audited_per_patient(w):
    with w.client("auth") as c:
        manifest, out = run_export(c, f"/Patient/{w.a}/$export", _type="DocumentReference")
        request_id = f"bulk-{uuid.uuid4().hex}"
        assert c.get(manifest["output"][0]["url"], headers={"X-Request-Id": request_id}).status_code == 200
    with w.client("bulk-ops") as c:
        events = c.get("/AuditEvent", params={"patient": w.a, "_sort": "-date", "_count": 50}).json()["entry"]
    mine = [e["resource"] for e in events if any(x.get("what", {}).get("identifier", {}).get("value") == request_id
                                                 for x in e["resource"].get("entity", []))]
    assert len(mine) == 1 and mine[0]["outcome"] == "0"
    refs = {x["what"]["reference"].split("/_history")[0] for x in mine[0]["entity"] if "reference" in x.get("what", {})}
    assert {f"DocumentReference/{r['id']}" for r in out["DocumentReference"]} | {f"Patient/{w.a}"} == refs
    assert any(a.get("who", {}).get("reference") == w.pr("auth") for a in mine[0]["agent"])


def test_capability_statement_and_discovery_advertise_export(w):
    with w.client("alice") as c:
        cap = c.get("/metadata").json()
        smart = c.get("/.well-known/smart-configuration").json()
    ops = {o["name"]: o for o in cap["rest"][0].get("operation", [])}
    assert ops["export"]["definition"] == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    patient = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Patient")
    assert "export" in {o["name"] for o in patient["operation"]}
    assert "system/*.rs" in smart.get("scopes_supported", []) or "system/*.read" in smart.get("scopes_supported", [])


# --- restart, crash, expiry (servers of their own, without tokens) ------------------------------------

def _dev_export(client, path, **params) -> str:
    r = client.get(path, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    return r.headers["Content-Location"]


def _patients(c, n: int) -> set[str]:
    ids = set()
    for _ in range(n):
        body = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                           "value": new_ins()}]}
        r = c.post("/Patient", json=body, headers=FHIR)
        assert r.status_code == 201, r.text
        ids.add(f"Patient/{r.json()['id']}")
    return ids


def test_a_queued_job_completes_after_a_restart(ferretdb_uri):
    first = start_server(ferretdb_uri, {"FHIR_EXPORT_RUNNER": "false"})
    database = first.database
    try:
        with first.client() as c:
            patients = _patients(c, 3)
            status_url = _dev_export(c, "/Patient/$export", _type="Patient")
            r = c.get(status_url)
            assert r.status_code == 202 and r.headers["X-Progress"] == "queued"
    finally:
        stop_server(first)
    second = start_server(ferretdb_uri, {"FHIR_DATABASE": database, "FHIR_EXPORT_POLL_SECONDS": "0.5"})
    try:
        with second.client() as c:
            status_url = second.fhir_base + status_url.split("/fhir", 1)[1]
            r = wait(c, status_url)
            assert r.status_code == 200, r.text
            got = [f"Patient/{orjson.loads(line)['id']}" for item in r.json()["output"]
                   for line in c.get(item["url"]).content.splitlines()]
        assert sorted(got) == sorted(patients)
    finally:
        stop_server(second)


def test_a_job_resumes_after_its_worker_crashed_between_two_files(ferretdb_uri):
    small = {"FHIR_EXPORT_FILE_MAX_RESOURCES": "2", "FHIR_EXPORT_PAGE_SIZE": "2", "FHIR_EXPORT_LEASE_SECONDS": "1",
             "FHIR_EXPORT_POLL_SECONDS": "0.5"}
    first = start_server(ferretdb_uri, {**small, "FHIR_TEST_EXPORT_CRASH_AFTER_PART": "1"})
    try:
        with first.client() as c:
            patients = _patients(c, 5)
            status_url = _dev_export(c, "/$export", _type="Patient")
        assert first.process.wait(timeout=60) == 3  # died right after recording its first file
    finally:
        stop_server(first)
    second = start_server(ferretdb_uri, {**small, "FHIR_DATABASE": first.database})
    try:
        with second.client() as c:
            r = wait(c, second.fhir_base + status_url.split("/fhir", 1)[1])
            assert r.status_code == 200, r.text
            output = r.json()["output"]
            got = [f"Patient/{orjson.loads(line)['id']}" for item in output
                   for line in c.get(item["url"]).content.splitlines()]
        assert len(output) == 3 and [o["count"] for o in output] == [2, 2, 1]
        assert sorted(got) == sorted(patients)  # nothing lost, nothing twice
    finally:
        stop_server(second)


def test_files_expire(ferretdb_uri):
    server = start_server(ferretdb_uri, {"FHIR_EXPORT_RETENTION_SECONDS": "1", "FHIR_EXPORT_POLL_SECONDS": "0.2"})
    try:
        with server.client() as c:
            _patients(c, 1)
            status_url = _dev_export(c, "/$export", _type="Patient")
            r = wait(c, status_url)
            assert r.status_code == 200
            expires = parsedate_to_datetime(r.headers["Expires"])
            file_url = r.json()["output"][0]["url"]
            assert c.get(file_url).status_code == 200
            # the server said when; then poll (bounded) until its runner has deleted the files
            time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()))
            for _ in range(50):
                r = c.get(status_url)
                if r.status_code != 200:
                    break
                time.sleep(0.2)
            assert r.status_code == 410 and r.json()["resourceType"] == "OperationOutcome"
            assert c.get(file_url).status_code == 410
    finally:
        stop_server(server)

