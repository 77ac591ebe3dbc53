"""$validate at type and instance level: https://hl7.org/fhir/R4/resource-operation-validate.html."""

from tests.helpers import JSON_HEADERS, assert_outcome, create, patient


def test_type_level_validate_valid_and_invalid(fhir):
    before = fhir.get("/Patient", params={"_count": "0"}).json()["total"]
    ok = fhir.post("/Patient/$validate", json=patient(), headers=JSON_HEADERS)
    assert ok.status_code == 200
    assert [i["severity"] for i in ok.json()["issue"]] == ["information"]
    bad = fhir.post("/Patient/$validate", json=patient(gender="robot"), headers=JSON_HEADERS)
    assert bad.status_code == 200
    assert bad.json()["issue"][0]["severity"] == "error"
    assert bad.json()["issue"][0]["expression"] == ["Patient.gender"]
    assert fhir.get("/Patient", params={"_count": "0"}).json()["total"] == before  # validation writes nothing


def test_validate_with_parameters_body(fhir):
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient(birthDate="not-a-date")},
        {"name": "mode", "valueCode": "create"}]}
    r = fhir.post("/Patient/$validate", json=params, headers=JSON_HEADERS)
    assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "error"
    bad_mode = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()},
                                                            {"name": "mode", "valueCode": "explode"}]}
    assert_outcome(fhir.post("/Patient/$validate", json=bad_mode, headers=JSON_HEADERS), 400)


def test_instance_level_validate(fhir):
    created = create(fhir, patient())
    stored = fhir.get(f"/Patient/{created['id']}/$validate")
    assert stored.status_code == 200 and stored.json()["issue"][0]["severity"] == "information"
    upd = fhir.post(f"/Patient/{created['id']}/$validate", params={"mode": "update"},
                    json=dict(created, id="other"), headers=JSON_HEADERS)
    assert upd.json()["issue"][0]["severity"] == "error"
    assert fhir.get(f"/Patient/{created['id']}/$validate", params={"mode": "delete"}).status_code == 200
    assert_outcome(fhir.get("/Patient/nope-404/$validate"), 404)


def test_unknown_operation_is_404(fhir):
    assert_outcome(fhir.post("/Patient/$frobnicate", json={}, headers=JSON_HEADERS), 404, "not-supported")
