"""Transaction Bundles are all-or-nothing even when the server dies in the middle of a commit.

A server started with FHIR_TEST_CRASH_AFTER_STEP=N exits (os._exit, no clean-up) at the N-th
step of the write protocol; a server restarted on the same database then serves readers. For the
application-level protocol (FerretDB: storage/transactions.py) the steps of a 3-entry transaction
touching 3 types are: 3 pending history inserts, the commit point, 3 applies, 3 unmarkings — so a
crash at or before the 3rd step must leave nothing visible, and a crash at the commit point or
after must leave everything visible once the restarted server has recovered. With native engine
transactions (mongoeco) a crash before the commit leaves nothing.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import start_server, stop_server

FHIR = {"Content-Type": "application/fhir+json"}
SETUP_STEPS = 1  # the Organization created first: one normal write (history insert, then apply)
PENDING_STEPS = 3  # one per transaction entry
TOTAL_STEPS = PENDING_STEPS + 1 + 3 + 3  # + commit point + applies + unmarkings (3 types)


def _bundle(system: str, org: dict) -> dict:
    pat = f"urn:uuid:{uuid.uuid4()}"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": pat, "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": system, "value": "1"}]}},
        {"request": {"method": "POST", "url": "DocumentReference"},
         "resource": {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": pat},
                      "identifier": [{"system": system, "value": "doc"}],
                      "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}]}},
        {"request": {"method": "PUT", "url": f"Organization/{org['id']}"},
         "resource": {**org, "name": f"renamed {system}"}},
    ]}


def _state(c: httpx.Client, system: str, org_id: str) -> tuple[int, int, bool]:
    patients = c.get("/Patient", params={"identifier": f"{system}|", "_total": "accurate"}).json()["total"]
    docs = c.get("/DocumentReference", params={"identifier": f"{system}|", "_total": "accurate"}).json()["total"]
    org = c.get(f"/Organization/{org_id}")
    assert org.status_code == 200, org.text
    history = c.get(f"/Organization/{org_id}/_history").json()
    renamed = org.json()["name"] == f"renamed {system}"
    assert history["total"] == (2 if renamed else 1)  # no half-visible version in history either
    # the Provenance of each write lives in its history version: it is there exactly when the write is
    provenances = c.get("/Provenance", params={"target": f"Organization/{org_id}"}).json().get("entry", [])
    assert sorted(e["resource"]["target"][0]["reference"] for e in provenances) == [
        f"Organization/{org_id}/_history/{v}" for v in ((1, 2) if renamed else (1,))]
    provenances = c.get("/Provenance", params={"_summary": "count"}).json()["total"]
    assert provenances == (4 if renamed else 1)  # the Organization's, and one per entry
    return patients, docs, renamed


def _crash_and_restart(uri: str, crash_after: int) -> tuple[int, int, bool, bool]:
    database = "t_" + uuid.uuid4().hex[:12]
    system = f"urn:test:{uuid.uuid4().hex}"
    crashing = start_server(uri, {"FHIR_DATABASE": database, "FHIR_TEST_CRASH_AFTER_STEP": str(crash_after)})
    completed = False
    try:
        with crashing.client() as c:
            org = c.post("/Organization", json={"resourceType": "Organization", "name": "CH"}, headers=FHIR).json()
            try:
                r = c.post("", json=_bundle(system, org), headers=FHIR)
                completed = r.status_code == 200
            except httpx.HTTPError:
                pass  # the server died mid-request
    finally:
        stop_server(crashing)
    restarted = start_server(uri, {"FHIR_DATABASE": database})
    try:
        with restarted.client() as c:
            return (*_state(c, system, org["id"]), completed)
    finally:
        stop_server(restarted)


@pytest.mark.parametrize("step", range(SETUP_STEPS + 1, SETUP_STEPS + TOTAL_STEPS + 2))
def test_application_level_commit_survives_a_crash_at_every_step(ferretdb_uri, step):
    patients, docs, renamed, completed = _crash_and_restart(ferretdb_uri, step)
    committed = step > SETUP_STEPS + PENDING_STEPS  # the commit point was reached
    assert (patients, docs, renamed) == ((1, 1, True) if committed else (0, 0, False))
    assert completed == (step > SETUP_STEPS + TOTAL_STEPS)


@pytest.mark.parametrize("step", [SETUP_STEPS + 1, SETUP_STEPS + PENDING_STEPS, SETUP_STEPS + PENDING_STEPS + 1])
def test_native_transaction_crash_applies_nothing(mongoeco_uri, step):
    patients, docs, renamed, completed = _crash_and_restart(mongoeco_uri, step)
    if completed:  # past the last write step there is nothing left to crash in
        assert (patients, docs, renamed) == (1, 1, True)
    else:
        assert (patients, docs, renamed) == (0, 0, False)
