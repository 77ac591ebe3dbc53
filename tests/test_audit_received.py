"""AuditEvents received from other systems (issue 10, item 8; IHE ITI-20 "Record Audit Event" in its
FHIR form, a POST of an AuditEvent): a system client with an AuditEvent create scope submits what
an EHR recorded; the event is validated, joins the audit trail's hash chains (so `$verify` covers
it), keeps its `recorded` and gets the server's `meta.lastUpdated`; the POST itself is audited;
users — patients and professionals — cannot create AuditEvents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pymongo import MongoClient

from tests.auth_helpers import add_client, backend_token, public_jwks, rsa_key
from tests.consent_world import FHIR

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RECORDED = "2026-01-02T03:04:05.678+01:00"


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


@pytest.fixture(scope="module")
def collector(w) -> str:
    """An audit collection service: an operator with nothing but the AuditEvent create scope."""
    key = rsa_key()
    add_client(w.server, "audit-collector", "confidential-asymmetric", "system/AuditEvent.c", redirect_uris=(),
               jwks=public_jwks(key), operator=True)
    return backend_token(w.server, "audit-collector", key, "system/AuditEvent.c")["access_token"]


def ehr_event(patient: str, practitioner: str) -> dict:
    """What a hospital EHR recorded: its user read the patient's chart locally (BALP PatientRead)."""
    return {"resourceType": "AuditEvent", "meta": {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "action": "R", "recorded": RECORDED, "outcome": "0",
            "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "IRCP"}]},
                       "who": {"reference": practitioner}, "requestor": True},
                      {"type": {"coding": [{"system": DCM, "code": "110153"}]},
                       "who": {"identifier": {"system": "urn:ehr:hopital-nord", "value": "dpi-1"}}, "requestor": False}],
            "source": {"site": "Hôpital Nord", "observer": {"display": "DPI Hôpital Nord"}},
            "entity": [{"what": {"reference": f"Patient/{patient}"},
                        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}]}


def test_a_received_event_joins_the_chain_keeps_recorded_and_is_itself_audited(w, collector):
    pid, token = w.fresh_patient()
    before = datetime.now(UTC) - timedelta(seconds=1)
    with w.client(collector) as c:
        r = c.post("/AuditEvent", json=ehr_event(pid, w.pr("auth")), headers={**FHIR, "X-Request-Id": "iti20-" + pid})
    assert r.status_code == 201, r.text
    stored = r.json()
    rid = stored["id"]
    assert r.headers["Location"].endswith(f"/AuditEvent/{rid}/_history/1")
    assert stored["recorded"] == RECORDED and stored["meta"]["versionId"] == "1"
    lu = datetime.fromisoformat(stored["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert before <= lu <= datetime.now(UTC) + timedelta(seconds=1)  # when we took it, not what it said
    with MongoClient(w.server.mongodb_uri) as client:
        db = client[w.server.database]
        doc = db["AuditEvent"].find_one({"_id": rid})
        assert doc is not None and isinstance(doc.get("_ac"), str) and isinstance(doc.get("_as"), int)
        assert db["AuditEvent_history"].count_documents({"_id": f"{rid}/1"}) == 0  # write-once, like ours
        everything = [orjson.loads(d["_json"]) for d in db["AuditEvent"].find({}, {"_json": 1})]
    ours = [e for e in everything if e["id"] != rid and any(
        x.get("what", {}).get("identifier", {}).get("value") == "iti20-" + pid for x in e.get("entity", []))]
    assert len(ours) == 1  # the server's own record of the POST (BALP create), in the same trail
    assert ours[0]["subtype"][0]["code"] == "create" and ours[0]["outcome"] == "0"
    assert f"AuditEvent/{rid}/_history/1" in {x.get("what", {}).get("reference") for x in ours[0]["entity"]}
    with w.client("operator") as op:
        assert op.get(f"/AuditEvent/{rid}").json()["recorded"] == RECORDED
        v = op.get("/AuditEvent/$verify")
        assert v.status_code == 200 and v.json()["issue"][0]["severity"] == "information", v.text
    with w.client(token) as c:  # in the patient's access history, with the professional's name
        r = c.get(f"/Patient/{pid}/$access-history", params={"_count": "100"})
    [mine] = [e["resource"] for e in r.json()["entry"] if e["resource"]["id"] == rid]
    assert "Dr Auth" in mine["text"]["div"] and "a consulté" in mine["text"]["div"]


def test_a_received_event_is_validated(w, collector):
    pid, _ = w.fresh_patient(user=False)
    bad = ehr_event(pid, w.pr("auth"))
    del bad["source"]
    with w.client(collector) as c:
        r = c.post("/AuditEvent", json=bad, headers=FHIR)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
        nobody = ehr_event("does-not-exist", w.pr("auth"))
        assert c.post("/AuditEvent", json=nobody, headers=FHIR).status_code == 400
        tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "AuditEvent"}, "resource": ehr_event(pid, w.pr("auth"))}]}
        r = c.post("/", json=tx, headers=FHIR)
        assert r.status_code in (403, 422), r.text  # never inside a transaction
    with w.client("operator") as op:
        found = op.get("/AuditEvent", params={"patient": pid, "_count": "1000"}).json().get("entry", [])
        assert not [e for e in found if e["resource"].get("source", {}).get("site") == "Hôpital Nord"]


@pytest.mark.parametrize("who", ["auth", "admin", "alice"])
def test_users_cannot_create_audit_events(w, who):
    event = ehr_event(w.a, w.pr("auth"))
    with w.client(who) as c:
        r = c.post("/AuditEvent", json=event, headers=FHIR)
    assert r.status_code == 403, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
