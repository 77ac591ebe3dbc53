"""Regression tests for the access defects the enforcement seam closes (every check runs on the
resource as it will be stored, writes in a patient's context must be about that patient, every
path to data goes through one rule), against a real server enforcing SMART scopes.

Expectations come from the SMART App Launch 2.2 scope rules and R4's patient compartment, as
restated in each test, not from the server's code."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from tests.auth_helpers import add_client, backend_token, fhir_client, public_jwks, rsa_key, user_token
from tests.dmp import CATEGORY, authorization
from tests.helpers import new_ins

FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture(scope="module")
def w(auth_world):
    return auth_world


@pytest.fixture(scope="module")
def helene(w):
    """Patient P1 with every patient-context permission (patient/*.cruds)."""
    tok = user_token(w.server, "app", "helene", "launch/patient patient/*.cruds")["access_token"]
    with fhir_client(w.server, tok) as c:
        yield c


@pytest.fixture(scope="module")
def jerome(w):
    tok = user_token(w.server, "app", "jerome", "launch/patient patient/*.cruds")["access_token"]
    with fhir_client(w.server, tok) as c:
        yield c


@pytest.fixture(scope="module")
def admin(w):
    with fhir_client(w.server, w.admin_token) as c:
        yield c


def _create(c, resource) -> dict:
    r = c.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()


def _doc(subject, **extra) -> dict:
    return {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": subject},
            "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}], **extra}


def _ids(bundle) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e}


# --- Binary: the check runs on the Binary that will be stored, whatever the Content-Type --------

RAW_TYPES = ["application/json-seq", "application/x-json-stream", "text/plain", "application/pdf",
             "application/octet-stream", "image/png"]


@pytest.mark.parametrize("content_type", RAW_TYPES)
def test_raw_binary_for_another_patient_is_refused(w, helene, admin, content_type):
    before = admin.get("/Binary", params={"securitycontext": f"Patient/{w.p2}", "_total": "accurate"}).json()["total"]
    r = helene.post("/Binary", content=b"not json {", headers={"Content-Type": content_type,
                                                                "X-Security-Context": f"Patient/{w.p2}"})
    assert r.status_code == 403, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    new_id = uuid.uuid4().hex
    r = helene.put(f"/Binary/{new_id}", content=b"x", headers={"Content-Type": content_type,
                                                                "X-Security-Context": f"Patient/{w.p2}"})
    assert r.status_code == 403, r.text
    assert admin.get(f"/Binary/{new_id}").status_code == 404
    after = admin.get("/Binary", params={"securitycontext": f"Patient/{w.p2}", "_total": "accurate"}).json()["total"]
    assert after == before  # nothing was planted in P2's record
    # the same request about the patient in context is fine
    ok = helene.post("/Binary", content=b"mine", headers={"Content-Type": content_type,
                                                          "X-Security-Context": f"Patient/{w.p1}"})
    assert ok.status_code == 201, ok.text


def test_binary_json_body_decides_not_the_header(w, helene):
    body = {"resourceType": "Binary", "contentType": "text/plain", "securityContext": {"reference": f"Patient/{w.p2}"},
            "data": base64.b64encode(b"planted").decode()}
    r = helene.post("/Binary", content=json.dumps(body), headers={"Content-Type": "APPLICATION/FHIR+JSON",
                                                                   "X-Security-Context": f"Patient/{w.p1}"})
    assert r.status_code == 403, r.text
    # no securityContext at all: nobody's record, not this patient's to write
    r = helene.post("/Binary", content=b"orphan", headers={"Content-Type": "text/plain"})
    assert r.status_code == 403, r.text


# --- patient-context writes: about the patient in context, never the directory -------------------

def test_patient_token_cannot_rewrite_the_professional_directory(w, helene, admin):
    org = _create(admin, {"resourceType": "Organization", "name": "Centre de santé"})
    assert helene.get(f"/Practitioner/{w.pr1}").status_code == 200  # reading the directory is fine
    patch = [{"op": "add", "path": "/telecom", "value": [{"system": "email", "value": "attacker@example.org"}]}]
    assert helene.patch(f"/Practitioner/{w.pr1}", content=json.dumps(patch), headers=PATCH).status_code == 403
    assert helene.post("/Organization", json={"resourceType": "Organization", "name": "Fake"},
                       headers=FHIR).status_code == 403
    assert helene.put(f"/Organization/{org['id']}", json={**org, "name": "Renamed"}, headers=FHIR).status_code == 403
    assert helene.delete(f"/Organization/{org['id']}").status_code == 403
    assert helene.post("/PractitionerRole", json={"resourceType": "PractitionerRole"}, headers=FHIR).status_code == 403
    assert "telecom" not in admin.get(f"/Practitioner/{w.pr1}").json()
    assert admin.get(f"/Organization/{org['id']}").json()["name"] == "Centre de santé"


@pytest.mark.parametrize("resource", [
    lambda a, b: _doc(f"Patient/{b}", author=[{"reference": f"Patient/{a}"}]),
    lambda a, b: {"resourceType": "List", "status": "current", "mode": "working",
                  "subject": {"reference": f"Patient/{b}"}, "source": {"reference": f"Patient/{a}"}},
    lambda a, b: {"resourceType": "Provenance", "recorded": "2026-01-01T00:00:00Z",
                  "target": [{"reference": f"Patient/{b}"}],
                  "agent": [{"who": {"reference": f"Patient/{a}"}}]},
    lambda a, b: {"resourceType": "AuditEvent", "recorded": "2026-01-01T00:00:00Z",
                  "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
                  "agent": [{"who": {"reference": f"Patient/{a}"}, "requestor": True}],
                  "source": {"observer": {"display": "x"}},
                  "entity": [{"what": {"reference": f"Patient/{b}"}}]},
], ids=["DocumentReference", "List", "Provenance", "AuditEvent"])
def test_patient_cannot_write_into_another_record_by_mentioning_themselves(w, helene, jerome, resource):
    body = resource(w.p1, w.p2)
    rtype = body["resourceType"]
    r = helene.post(f"/{rtype}", json=body, headers=FHIR)
    assert r.status_code == 403, r.text
    # the other patient finds nothing planted in their record
    # (the server's own audit trail of what Hélène did is not something she planted: type `rest`)
    assert not [e for e in jerome.get(f"/{rtype}", params={"_count": 1000}).json().get("entry", [])
                if "Patient/" + w.p1 in json.dumps(e["resource"])
                and e["resource"].get("type", {}).get("code") != "rest"]


def test_patient_cannot_move_own_document_to_another_record(w, helene):
    mine = _create(helene, _doc(f"Patient/{w.p1}", author=[{"reference": f"Patient/{w.p1}"}],
                                category=[{"coding": [{"system": CATEGORY, "code": "patient-authored"}]}]))
    patch = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{w.p2}"}]
    r = helene.patch(f"/DocumentReference/{mine['id']}", content=json.dumps(patch), headers=PATCH)
    assert r.status_code == 403, r.text
    assert helene.get(f"/DocumentReference/{mine['id']}").json()["subject"]["reference"] == f"Patient/{w.p1}"


def test_patient_cannot_create_a_patient_outside_their_compartment(w, helene, admin):
    ins = {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": new_ins()}
    r = helene.post("/Patient", json={"resourceType": "Patient", "id": w.p1, "identifier": [ins]}, headers=FHIR)
    assert r.status_code == 403, r.text
    found = admin.get("/Patient", params={"identifier": f"{ins['system']}|{ins['value']}"}).json()
    assert found.get("total") == 0


# --- Binary membership is an exact database filter; cursors carry nothing and bind the caller ---

def test_other_patients_binaries_are_not_enumerable(w, helene, jerome, admin):
    lst = _create(admin, {"resourceType": "List", "status": "current", "mode": "working",
                          "subject": {"reference": f"Patient/{w.p1}"},
                          "entry": [{"item": {"reference": f"Binary/{w.bin_p1}"}},
                                    {"item": {"reference": f"Binary/{w.bin_p2}"}}]})
    # chains into Binary see only this patient's Binaries: no existence oracle on P2's
    assert _ids(helene.get("/List", params={"item:Binary._id": w.bin_p2}).json()) == set()
    assert lst["id"] in _ids(helene.get("/List", params={"item:Binary._id": w.bin_p1}).json())
    mine = helene.get("/Binary", params={"_count": 1, "_total": "accurate"}).json()
    assert mine["total"] >= 1
    all_mine = helene.get("/Binary", params={"_count": 1000}).json()
    assert w.bin_p2 not in _ids(all_mine) and w.bin_p1 in _ids(all_mine)
    assert mine["total"] == len(all_mine["entry"])  # exact: counted by the same filter
    nxt = [link["url"] for link in mine["link"] if link["relation"] == "next"]
    if nxt:
        cursor = nxt[0].split("_cursor=", 1)[1]
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        assert w.bin_p1.encode() not in raw and b"Binary" not in raw  # sealed, not just encoded
        page2 = helene.get(nxt[0].split("/fhir", 1)[1])
        assert page2.status_code == 200
        # a link is the caller's: under another patient's token it is refused, not replayed
        assert jerome.get(nxt[0].split("/fhir", 1)[1]).status_code == 400


def test_forged_cursor_is_refused(helene):
    forged = base64.urlsafe_b64encode(json.dumps([[None, "zzz"], None]).encode()).decode().rstrip("=")
    assert helene.get("/Binary", params={"_cursor": forged}).status_code == 400


# --- existence oracles and stale views ---------------------------------------------------------

def test_deleted_resource_of_another_patient_is_404_without_version_headers(w, helene, admin):
    theirs = _create(admin, _doc(f"Patient/{w.p2}"))
    assert admin.delete(f"/DocumentReference/{theirs['id']}").status_code == 204
    r = helene.get(f"/DocumentReference/{theirs['id']}")
    assert r.status_code == 404 and "etag" not in r.headers and "last-modified" not in r.headers
    assert admin.get(f"/DocumentReference/{theirs['id']}").status_code == 410
    mine = _create(admin, _doc(f"Patient/{w.p1}"))
    assert admin.delete(f"/DocumentReference/{mine['id']}").status_code == 204
    assert helene.get(f"/DocumentReference/{mine['id']}").status_code == 410  # their own: the truth


def test_system_history_shows_only_types_the_token_may_search(w, admin):
    consent = _create(admin, authorization(w.p1, [f"Practitioner/{w.pr1}"], actions=["read"]))
    assert admin.delete(f"/Consent/{consent['id']}").status_code == 204
    assert any(e["fullUrl"].endswith(f"Consent/{consent['id']}")
               for e in admin.get("/_history", params={"_count": 50}).json()["entry"])
    tok = backend_token(w.server, "backend", w.keys["backend"], "system/DocumentReference.rs system/Patient.read")
    with fhir_client(w.server, tok["access_token"]) as c:
        r = c.get("/_history", params={"_count": 1000})
    assert r.status_code == 200, r.text
    types = {e["fullUrl"].rsplit("/", 2)[1] for e in r.json().get("entry", [])}
    assert types and types <= {"DocumentReference", "Patient"}


def test_includes_need_the_search_permission_on_the_included_type(w):
    # practitioner-picked: patient/Patient.rs and patient/DocumentReference.r (read by id, no search)
    tok = user_token(w.server, "app", "dr.martin", "launch/patient patient/Patient.rs patient/DocumentReference.r",
                     patient=w.p1)["access_token"]
    with fhir_client(w.server, tok) as c:
        rev = c.get("/Patient", params={"_revinclude": "DocumentReference:subject"}).json()
        assert {e["resource"]["resourceType"] for e in rev["entry"]} == {"Patient"}
        assert c.get(f"/DocumentReference/{w.doc_p1}").status_code == 200  # reading stays allowed


def test_moved_document_is_not_readable_through_old_versions(w, helene, admin):
    doc = _create(admin, _doc(f"Patient/{w.p1}", description="misfiled"))
    assert helene.get(f"/DocumentReference/{doc['id']}/_history/1").status_code == 200
    moved = {**doc, "subject": {"reference": f"Patient/{w.p2}"}}
    assert admin.put(f"/DocumentReference/{doc['id']}", json=moved, headers=FHIR).status_code == 200
    assert helene.get(f"/DocumentReference/{doc['id']}/_history/1").status_code == 404
    assert helene.get(f"/DocumentReference/{doc['id']}/_history").status_code == 404
    assert admin.get(f"/DocumentReference/{doc['id']}/_history/1").status_code == 200


def test_foreign_base_reference_is_not_the_local_patient(w, helene, admin):
    # a document of the record must name a local Patient (422); a List may name another server's
    r = admin.post("/DocumentReference", json=_doc(f"https://other.example/fhir/Patient/{w.p1}"), headers=FHIR)
    assert r.status_code == 422, r.text
    lst = _create(admin, {"resourceType": "List", "status": "current", "mode": "working",
                          "subject": {"reference": f"https://other.example/fhir/Patient/{w.p1}"}})
    assert helene.get(f"/List/{lst['id']}").status_code == 404
    assert lst["id"] not in _ids(helene.get("/List", params={"_count": 1000}).json())
    r = helene.put(f"/List/{lst['id']}", json={**lst, "title": "x"}, headers=FHIR)
    assert r.status_code == 404


def test_backend_write_is_checked_on_the_stored_resource(w):
    """A system/ scope with a granular query writes only what matches it, as stored."""
    key = rsa_key()
    add_client(w.server, "granular-writer", "confidential-asymmetric",
               "system/DocumentReference.cu?status=current", redirect_uris=(), jwks=public_jwks(key), operator=True)
    tok = backend_token(w.server, "granular-writer", key, "system/DocumentReference.cu?status=current")
    with fhir_client(w.server, tok["access_token"]) as c:
        assert c.post("/DocumentReference", json=_doc(f"Patient/{w.p1}"), headers=FHIR).status_code == 201
        r = c.post("/DocumentReference", json={**_doc(f"Patient/{w.p1}"), "status": "superseded"}, headers=FHIR)
        assert r.status_code == 403, r.text
