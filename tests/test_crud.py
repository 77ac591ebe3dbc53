"""read, vread, create, update, update-as-create, delete over HTTP (https://hl7.org/fhir/R4/http.html)."""

from email.utils import parsedate_to_datetime

from tests.dmp import record_consent
from tests.helpers import JSON_HEADERS, assert_outcome, create, new_id, patient


def test_create_assigns_id_version_and_headers(any_fhir):
    r = any_fhir.post("/Patient", json=patient(id="client-chosen"), headers=JSON_HEADERS)
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "client-chosen"  # ids are server-assigned on create
    assert body["meta"]["versionId"] == "1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert parsedate_to_datetime(r.headers["last-modified"]).year >= 2026
    assert body["name"][0]["given"] == ["Hélène"]
    assert list(body)[:3] == ["resourceType", "id", "meta"]


def test_read_returns_stored_json_with_etag(any_fhir):
    created = create(any_fhir, patient())
    r = any_fhir.get(f"/Patient/{created['id']}")
    assert r.status_code == 200
    assert r.json() == created
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["content-type"].startswith("application/fhir+json")


def test_update_increments_version_and_vread_keeps_old(any_fhir):
    created = create(any_fhir, patient())
    pid = created["id"]
    changed = dict(created, gender="male")
    r = any_fhir.put(f"/Patient/{pid}", json=changed, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    assert r.headers["etag"] == 'W/"2"'
    assert r.headers["location"].endswith(f"/Patient/{pid}/_history/2")
    assert any_fhir.get(f"/Patient/{pid}/_history/1").json()["gender"] == "female"
    assert any_fhir.get(f"/Patient/{pid}/_history/2").json()["gender"] == "male"
    assert any_fhir.get(f"/Patient/{pid}").json()["gender"] == "male"


def test_update_as_create_with_client_id(any_fhir):
    pid = new_id()
    r = any_fhir.put(f"/Patient/{pid}", json=patient(id=pid), headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    assert r.json()["id"] == pid and r.json()["meta"]["versionId"] == "1"
    r2 = any_fhir.put(f"/Patient/{pid}", json=patient(id=pid, gender="other"), headers=JSON_HEADERS)
    assert r2.status_code == 200 and r2.json()["meta"]["versionId"] == "2"


def test_delete_then_read_is_gone_and_history_has_tombstone(any_fhir):
    created = create(any_fhir, patient())
    pid = created["id"]
    r = any_fhir.delete(f"/Patient/{pid}")
    assert r.status_code == 204
    assert r.headers["etag"] == 'W/"2"'
    assert_outcome(any_fhir.get(f"/Patient/{pid}"), 410, "deleted")
    assert_outcome(any_fhir.get(f"/Patient/{pid}/_history/2"), 410, "deleted")
    assert any_fhir.get(f"/Patient/{pid}/_history/1").status_code == 200
    hist = any_fhir.get(f"/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "POST"]
    assert "resource" not in hist["entry"][0]
    # deleting again is idempotent and writes nothing
    assert any_fhir.delete(f"/Patient/{pid}").status_code == 204
    assert len(any_fhir.get(f"/Patient/{pid}/_history").json()["entry"]) == 2


def test_update_after_delete_recreates_with_next_version(any_fhir):
    created = create(any_fhir, patient())
    pid = created["id"]
    any_fhir.delete(f"/Patient/{pid}")
    r = any_fhir.put(f"/Patient/{pid}", json=patient(id=pid), headers=JSON_HEADERS)
    assert r.status_code == 201
    assert r.json()["meta"]["versionId"] == "3"
    assert any_fhir.get(f"/Patient/{pid}").status_code == 200


def test_unknown_resource_is_404_and_unknown_version_404(any_fhir):
    assert_outcome(any_fhir.get(f"/Patient/{new_id()}"), 404, "not-found")
    created = create(any_fhir, patient())
    assert_outcome(any_fhir.get(f"/Patient/{created['id']}/_history/9"), 404, "not-found")
    assert_outcome(any_fhir.get(f"/Patient/{created['id']}/_history/abc"), 404)


def test_delete_of_unknown_is_204_and_creates_nothing(fhir):
    pid = new_id()
    assert fhir.delete(f"/Patient/{pid}").status_code == 204
    assert_outcome(fhir.get(f"/Patient/{pid}/_history"), 404)


def test_prefer_return(fhir):
    minimal = fhir.post("/Patient", json=patient(), headers={**JSON_HEADERS, "Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    oo = fhir.post("/Patient", json=patient(), headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"})
    assert oo.status_code == 201 and oo.json()["resourceType"] == "OperationOutcome"
    assert oo.json()["issue"][0]["severity"] == "information"
    rep = fhir.post("/Patient", json=patient(), headers={**JSON_HEADERS, "Prefer": "return=representation"})
    assert rep.json()["resourceType"] == "Patient"


def test_all_supported_types_round_trip(fhir):
    pid = create(fhir, patient())["id"]
    samples = [
        {"resourceType": "Practitioner", "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "10003456786"}],
         "name": [{"family": "Martin", "given": ["Éloïse"], "prefix": ["Dr"]}]},
        {"resourceType": "Organization", "name": "Centre hospitalier de Lyon"},
        {"resourceType": "PractitionerRole", "active": True},
        record_consent(pid),
        {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{pid}"},
         "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/x"}}]},
        {"resourceType": "AuditEvent",
         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
         "recorded": "2026-11-25T10:00:00Z", "agent": [{"requestor": True}], "source": {"observer": {"display": "fhir"}}},
        {"resourceType": "Provenance", "target": [{"reference": f"Patient/{pid}"}], "recorded": "2026-11-25T10:00:00+01:00",
         "agent": [{"who": {"display": "Dr Martin"}}]},
        {"resourceType": "List", "status": "current", "mode": "working"},
        {"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="},
    ]
    for resource in samples:
        created = create(fhir, resource)
        back = fhir.get(f"/{resource['resourceType']}/{created['id']}")
        assert back.status_code == 200, (resource["resourceType"], back.text)
        assert {k: v for k, v in back.json().items() if k not in ("id", "meta")} == resource
