"""Binary: inline when small, GridFS and streamed when large (https://hl7.org/fhir/R4/binary.html)."""

import base64
import hashlib
import os

from tests.conftest import TEST_INLINE_MAX
from tests.helpers import JSON_HEADERS, assert_outcome, create, patient


def test_small_binary_inline_round_trip(fhir):
    data = b"%PDF-1.4 tiny"
    created = create(fhir, {"resourceType": "Binary", "contentType": "application/pdf",
                            "data": base64.b64encode(data).decode()})
    r = fhir.get(f"/Binary/{created['id']}")
    assert base64.b64decode(r.json()["data"]) == data
    raw = fhir.get(f"/Binary/{created['id']}", headers={"Accept": "application/pdf"})
    assert raw.status_code == 200 and raw.content == data
    assert raw.headers["content-type"].startswith("application/pdf")


def test_large_binary_goes_to_gridfs_and_streams_back(any_fhir):
    data = os.urandom(TEST_INLINE_MAX * 40 + 7)  # above the inline limit; length not a multiple of 3
    created = create(any_fhir, {"resourceType": "Binary", "contentType": "application/octet-stream",
                                "data": base64.b64encode(data).decode()})
    assert base64.b64decode(created["data"]) == data
    as_json = any_fhir.get(f"/Binary/{created['id']}")
    assert as_json.status_code == 200 and base64.b64decode(as_json.json()["data"]) == data
    assert as_json.json()["meta"]["versionId"] == "1"
    raw = any_fhir.get(f"/Binary/{created['id']}", headers={"Accept": "application/octet-stream"})
    assert hashlib.sha256(raw.content).digest() == hashlib.sha256(data).digest()
    # history and vread carry the content too
    assert base64.b64decode(any_fhir.get(f"/Binary/{created['id']}/_history/1").json()["data"]) == data
    hist = any_fhir.get(f"/Binary/{created['id']}/_history").json()
    assert base64.b64decode(hist["entry"][0]["resource"]["data"]) == data


def test_large_binary_spanning_chunks(fhir):
    data = os.urandom(600 * 1024 + 1)  # > two 255 KiB GridFS chunks, not a multiple of 3
    r = fhir.post("/Binary", content=data, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    assert r.json()["contentType"] == "application/pdf"
    raw = fhir.get(f"/Binary/{bid}", headers={"Accept": "application/pdf"})
    assert raw.content == data
    assert base64.b64decode(fhir.get(f"/Binary/{bid}").json()["data"]) == data


def test_raw_binary_update_and_security_context(fhir):
    pid = create(fhir, patient())["id"]
    r = fhir.put("/Binary/raw-bin-1", content=b"hello", headers={"Content-Type": "text/plain",
                                                                  "X-Security-Context": f"Patient/{pid}"})
    assert r.status_code == 201, r.text
    body = fhir.get("/Binary/raw-bin-1").json()
    assert body["securityContext"] == {"reference": f"Patient/{pid}"}
    assert base64.b64decode(body["data"]) == b"hello"


def test_bad_base64_is_rejected(fhir):
    r = fhir.post("/Binary", json={"resourceType": "Binary", "contentType": "text/plain", "data": "###"},
                  headers=JSON_HEADERS)
    assert_outcome(r, 400)


def test_binary_cannot_be_patched(fhir):
    created = create(fhir, {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="})
    r = fhir.patch(f"/Binary/{created['id']}", content=b"[]", headers={"Content-Type": "application/json-patch+json"})
    assert_outcome(r, 405)
