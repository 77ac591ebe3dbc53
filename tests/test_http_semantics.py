"""HTTP semantics and every error path: https://hl7.org/fhir/R4/http.html."""

import json

import pytest

from tests.helpers import FHIR_JSON, JSON_HEADERS, assert_outcome, create, new_id, patient


def _history_len(client, rtype, rid) -> int:
    r = client.get(f"/{rtype}/{rid}/_history")
    return len(r.json().get("entry", [])) if r.status_code == 200 else 0


def test_if_match_success_and_412(fhir):
    created = create(fhir, patient())
    pid = created["id"]
    ok = fhir.put(f"/Patient/{pid}", json=created, headers={**JSON_HEADERS, "If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.json()["meta"]["versionId"] == "2"
    stale = fhir.put(f"/Patient/{pid}", json=created, headers={**JSON_HEADERS, "If-Match": 'W/"1"'})
    assert_outcome(stale, 412, "conflict")
    assert fhir.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"
    assert_outcome(fhir.delete(f"/Patient/{pid}", headers={"If-Match": 'W/"1"'}), 412)
    assert fhir.get(f"/Patient/{pid}").status_code == 200
    assert_outcome(fhir.put(f"/Patient/{pid}", json=created, headers={**JSON_HEADERS, "If-Match": "garbage"}), 400)


def test_conditional_read(fhir):
    created = create(fhir, patient())
    url = f"/Patient/{created['id']}"
    r = fhir.get(url, headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304 and r.content == b""
    assert fhir.get(url, headers={"If-None-Match": 'W/"7"'}).status_code == 200
    last_modified = fhir.get(url).headers["last-modified"]
    assert fhir.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    assert fhir.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


def test_format_and_pretty(fhir):
    created = create(fhir, patient())
    url = f"/Patient/{created['id']}"
    pretty = fhir.get(url, params={"_pretty": "true"})
    assert b"\n  " in pretty.content and pretty.json() == created
    assert fhir.get(url, params={"_format": "json"}).status_code == 200
    assert fhir.get(url, params={"_format": "application/fhir+json"}).status_code == 200
    assert_outcome(fhir.get(url, params={"_format": "xml"}), 406, "not-supported")
    assert_outcome(fhir.get(url, headers={"Accept": "application/fhir+xml"}), 406)
    assert fhir.get(url, headers={"Accept": "application/json"}).status_code == 200
    assert fhir.get(url, headers={"Accept": "*/*"}).status_code == 200
    assert fhir.get(url, headers={"Accept": "text/html, application/fhir+json;q=0.9"}).status_code == 200


def test_plain_json_content_type_is_accepted(fhir):
    r = fhir.post("/Patient", content=json.dumps(patient()), headers={"Content-Type": "application/json"})
    assert r.status_code == 201


@pytest.mark.parametrize("content_type", ["application/fhir+xml", "text/plain", None])
def test_unsupported_content_type_is_415(fhir, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = fhir.post("/Patient", content=json.dumps(patient()).encode(), headers=headers)
    assert_outcome(r, 415, "not-supported")


@pytest.mark.parametrize("body,code", [
    (b"{not json", "structure"),
    (b"", "structure"),
    (b"[1,2]", "structure"),
    (b'{"gender": "female"}', "structure"),
    (b'{"resourceType": "Observation", "status": "final"}', "invalid"),
    (b'{"resourceType": "Patient", "gender": "robot"}', "code-invalid"),
    (b'{"resourceType": "Patient", "favouriteColour": "blue"}', "structure"),
    (b'{"resourceType": "Patient", "birthDate": "1985-02-30"}', "value"),
    (b'{"resourceType": "Patient", "name": []}', "structure"),
    (b'{"resourceType": "Patient", "name": [{"family": null}]}', "structure"),
    (b'{"resourceType": "Patient", "name": [{"family": ""}]}', None),
    (b'{"resourceType": "Patient", "managingOrganization": {"reference": "Nope/1"}}', "value"),
    (b'{"resourceType": "Patient", "managingOrganization": {"reference": "Organization/bad id"}}', "value"),
    (b'{"resourceType": "Patient", "link": [{"type": "seealso"}]}', "structure"),
    ("{\"resourceType\": \"Patient\", \"x\": " + "[" * 5000 + "]" * 5000 + "}", "structure"),
])
def test_invalid_create_is_400_with_outcome_and_writes_nothing(fhir, body, code):
    before = fhir.get("/Patient", params={"_count": "0"}).json()["total"]
    r = fhir.post("/Patient", content=body, headers=JSON_HEADERS)
    outcome = assert_outcome(r, 400, code)
    assert outcome["issue"][0]["severity"] == "error"
    assert fhir.get("/Patient", params={"_count": "0"}).json()["total"] == before


def test_validation_issue_points_at_the_element(fhir):
    r = fhir.post("/Patient", json=patient(gender="robot", name=[{"family": "X", "use": "nickname-ish"}]),
                  headers=JSON_HEADERS)
    outcome = assert_outcome(r, 400, "code-invalid")
    expressions = [e for i in outcome["issue"] for e in i.get("expression", [])]
    assert "Patient.gender" in expressions
    assert "Patient.name[0].use" in expressions


def test_urn_reference_outside_transaction_is_422(fhir):
    body = patient(managingOrganization={"reference": "urn:uuid:6f1b4a1e-8f4c-4b39-9b1e-0c7a0d9f2a11"})
    assert_outcome(fhir.post("/Patient", json=body, headers=JSON_HEADERS), 422, "business-rule")


def test_update_id_rules(fhir):
    created = create(fhir, patient())
    pid = created["id"]
    assert_outcome(fhir.put(f"/Patient/{pid}", json=dict(created, id="other"), headers=JSON_HEADERS), 400, "invalid")
    no_id = {k: v for k, v in created.items() if k != "id"}
    assert_outcome(fhir.put(f"/Patient/{pid}", json=no_id, headers=JSON_HEADERS), 400, "required")
    assert_outcome(fhir.put("/Patient/bad$id", json=created, headers=JSON_HEADERS), 400)
    assert_outcome(fhir.put(f"/Patient/{'x' * 65}", json=created, headers=JSON_HEADERS), 400)
    wrong_type = dict(created, resourceType="Practitioner")
    assert_outcome(fhir.put(f"/Patient/{pid}", json=wrong_type, headers=JSON_HEADERS), 400, "invalid")
    assert _history_len(fhir, "Patient", pid) == 1


def test_unknown_type_and_path_are_404(fhir):
    assert_outcome(fhir.get("/Observation/1"), 404, "not-supported")
    assert_outcome(fhir.get("/NotAType"), 404, "not-supported")
    assert_outcome(fhir.get("/Patient/1/_history/1/extra"), 404)
    assert_outcome(fhir.get("/$everything"), 404)


def test_unsupported_method_is_405_with_allow(fhir):
    r = fhir.request("POST", f"/Patient/{new_id()}", json=patient())
    assert_outcome(r, 405, "not-supported")
    assert set(r.headers["allow"].split(", ")) == {"GET", "PUT", "PATCH", "DELETE"}
    assert_outcome(fhir.request("DELETE", "/metadata"), 405)
    assert_outcome(fhir.request("PUT", "/Patient/x/_history"), 405)


def test_oversized_body_is_413_and_writes_nothing(fhir, server):
    from tests.conftest import TEST_MAX_BODY

    big = patient(text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">" +
                        "x" * (TEST_MAX_BODY + 10) + "</div>"})
    before = fhir.get("/Patient", params={"_count": "0"}).json()["total"]
    assert_outcome(fhir.post("/Patient", json=big, headers=JSON_HEADERS), 413, "too-costly")
    assert fhir.get("/Patient", params={"_count": "0"}).json()["total"] == before


def test_request_id_is_echoed_or_generated(fhir):
    r = fhir.get("/metadata", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = fhir.get("/metadata", headers={"X-Request-Id": "bad id with spaces"}).headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 32


def test_response_content_type_is_fhir_json(fhir):
    r = fhir.get("/metadata")
    assert r.headers["content-type"] == f"{FHIR_JSON}; charset=utf-8"
