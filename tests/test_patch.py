"""patch with JSON Patch: https://hl7.org/fhir/R4/http.html#patch."""

import json

from tests.helpers import assert_outcome, create, patient

PATCH = {"Content-Type": "application/json-patch+json"}


def test_json_patch_applies_and_versions(any_fhir):
    created = create(any_fhir, patient())
    pid = created["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "male"},
           {"op": "add", "path": "/name/0/given/-", "value": "Zoé"}]
    r = any_fhir.patch(f"/Patient/{pid}", content=json.dumps(ops), headers=PATCH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["gender"] == "male" and body["name"][0]["given"] == ["Hélène", "Zoé"]
    assert body["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
    assert any_fhir.get(f"/Patient/{pid}").json() == body


def test_patch_errors_change_nothing(fhir):
    created = create(fhir, patient())
    pid = created["id"]
    url = f"/Patient/{pid}"
    # result fails validation
    assert_outcome(fhir.patch(url, content=json.dumps([{"op": "replace", "path": "/gender", "value": "robot"}]),
                              headers=PATCH), 400, "code-invalid")
    # test op fails -> cannot be applied
    assert_outcome(fhir.patch(url, content=json.dumps([{"op": "test", "path": "/gender", "value": "male"}]),
                              headers=PATCH), 422)
    # changing the id is refused
    assert_outcome(fhir.patch(url, content=json.dumps([{"op": "replace", "path": "/id", "value": "zz"}]),
                              headers=PATCH), 422)
    # malformed patch documents
    assert_outcome(fhir.patch(url, content=b"{not json", headers=PATCH), 400)
    assert_outcome(fhir.patch(url, content=json.dumps({"op": "add"}), headers=PATCH), 400)
    assert_outcome(fhir.patch(url, content=json.dumps([{"op": "explode", "path": "/x"}]), headers=PATCH), 400)
    # wrong content types
    assert_outcome(fhir.patch(url, content=b"[]", headers={"Content-Type": "application/fhir+json"}), 415)
    assert_outcome(fhir.patch(url, content=b"[]", headers={"Content-Type": "text/plain"}), 415)
    # stale If-Match
    assert_outcome(fhir.patch(url, content=b"[]", headers={**PATCH, "If-Match": 'W/"5"'}), 412)
    assert fhir.get(url).json() == created


def test_patch_unknown_and_deleted(fhir):
    assert_outcome(fhir.patch("/Patient/nope-nope", content=b"[]", headers=PATCH), 404)
    created = create(fhir, patient())
    fhir.delete(f"/Patient/{created['id']}")
    assert_outcome(fhir.patch(f"/Patient/{created['id']}", content=b"[]", headers=PATCH), 410)
