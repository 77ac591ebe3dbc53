"""Conditional create, update, patch and delete (https://hl7.org/fhir/R4/http.html#ccreate etc.)."""

import json
import uuid

from tests.helpers import JSON_HEADERS, assert_outcome, create


def _ins() -> str:
    return uuid.uuid4().hex[:13]


def _pat(value: str, **extra) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": value}],
            **extra}


def _count(client, ident: str) -> int:
    return client.get("/Patient", params={"identifier": ident, "_summary": "count"}).json()["total"]


def test_conditional_create(any_fhir):
    ins = _ins()
    cond = {**JSON_HEADERS, "If-None-Exist": f"identifier=urn:test:mrn|{ins}"}
    first = any_fhir.post("/Patient", json=_pat(ins), headers=cond)
    assert first.status_code == 201
    again = any_fhir.post("/Patient", json=_pat(ins, gender="male"), headers=cond)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert "gender" not in again.json()
    assert _count(any_fhir, ins) == 1
    create(any_fhir, _pat(ins))
    assert_outcome(any_fhir.post("/Patient", json=_pat(ins), headers=cond), 412)
    assert _count(any_fhir, ins) == 2
    # unknown criteria are refused rather than ignored
    bad = {**JSON_HEADERS, "If-None-Exist": "colour=blue"}
    assert_outcome(any_fhir.post("/Patient", json=_pat(ins), headers=bad), 400)


def test_conditional_update(fhir):
    ins = _ins()
    url = f"/Patient?identifier=urn:test:mrn|{ins}"
    created = fhir.put(url, json=_pat(ins), headers=JSON_HEADERS)
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = fhir.put(url, json=_pat(ins, gender="female"), headers=JSON_HEADERS)
    assert updated.status_code == 200 and updated.json()["id"] == pid
    assert updated.json()["meta"]["versionId"] == "2"
    wrong_id = fhir.put(url, json=_pat(ins, id="someone-else"), headers=JSON_HEADERS)
    assert_outcome(wrong_id, 400)
    create(fhir, _pat(ins))
    assert_outcome(fhir.put(url, json=_pat(ins), headers=JSON_HEADERS), 412)
    # no match but an id in the body: update as create with that id
    other = _ins()
    r = fhir.put(f"/Patient?identifier={other}", json=_pat(other, id=f"cu-{other}"), headers=JSON_HEADERS)
    assert r.status_code == 201 and r.json()["id"] == f"cu-{other}"
    assert_outcome(fhir.put("/Patient", json=_pat(other), headers=JSON_HEADERS), 400)  # no criteria


def test_conditional_patch(fhir):
    ins = _ins()
    created = create(fhir, _pat(ins))
    ops = json.dumps([{"op": "add", "path": "/gender", "value": "other"}])
    hdr = {"Content-Type": "application/json-patch+json"}
    r = fhir.patch(f"/Patient?identifier={ins}", content=ops, headers=hdr)
    assert r.status_code == 200 and r.json()["id"] == created["id"] and r.json()["gender"] == "other"
    assert_outcome(fhir.patch(f"/Patient?identifier=nobody-{ins}", content=ops, headers=hdr), 404)
    create(fhir, _pat(ins))
    assert_outcome(fhir.patch(f"/Patient?identifier={ins}", content=ops, headers=hdr), 412)


def test_conditional_delete_single_and_multiple(fhir):
    ins = _ins()
    a, b = create(fhir, _pat(ins)), create(fhir, _pat(ins))
    keep = create(fhir, _pat(_ins()))
    r = fhir.delete(f"/Patient?identifier={ins}")
    assert r.status_code == 200 and "deleted 2" in r.json()["issue"][0]["diagnostics"]
    for p in (a, b):
        assert fhir.get(f"/Patient/{p['id']}").status_code == 410
    assert fhir.get(f"/Patient/{keep['id']}").status_code == 200
    none = fhir.delete(f"/Patient?identifier={ins}")
    assert none.status_code == 200 and "deleted 0" in none.json()["issue"][0]["diagnostics"]
    assert_outcome(fhir.delete("/Patient"), 400)  # no criteria: would delete everything
    assert_outcome(fhir.delete("/Patient?colour=blue"), 400)


def test_transaction_conditional_create_reuses_existing(any_fhir):
    ins = _ins()
    existing = create(any_fhir, _pat(ins))
    pat_urn, doc_urn = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": pat_urn, "resource": _pat(ins),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={ins}"}},
        {"fullUrl": doc_urn, "resource": {"resourceType": "DocumentReference", "status": "current",
                                          "subject": {"reference": pat_urn},
                                          "content": [{"attachment": {"contentType": "text/plain"}}]},
         "request": {"method": "POST", "url": "DocumentReference"}}]}
    out = any_fhir.post("", json=bundle, headers=JSON_HEADERS)
    assert out.status_code == 200, out.text
    entries = out.json()["entry"]
    assert entries[0]["response"]["status"] == "200"
    assert entries[1]["resource"]["subject"]["reference"] == f"Patient/{existing['id']}"
    assert _count(any_fhir, ins) == 1
