"""batch and transaction Bundles: https://hl7.org/fhir/R4/http.html#transaction."""

import uuid

from tests.helpers import JSON_HEADERS, assert_outcome, create, patient


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _count(client, rtype) -> int:
    return client.get(f"/{rtype}", params={"_count": "0"}).json()["total"]


def test_batch_entries_succeed_or_fail_independently(any_fhir):
    existing = create(any_fhir, patient())
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        {"resource": patient(gender="robot"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": f"Patient/{existing['id']}"}},
    ]}
    r = any_fhir.post("", json=bundle, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201", "200", "404", "400", "204"]
    assert out["entry"][0]["response"]["location"].startswith(any_fhir.base_url.__str__().rstrip("/"))
    assert out["entry"][1]["resource"]["id"] == existing["id"]
    assert out["entry"][3]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert any_fhir.get(f"/Patient/{existing['id']}").status_code == 410


def test_transaction_rewrites_urn_references_atomically(any_fhir):
    org, pat = _urn(), _urn()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": pat, "resource": patient(managingOrganization={"reference": org}),
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": org, "resource": {"resourceType": "Organization", "name": "CHU de Nantes"},
         "request": {"method": "POST", "url": "Organization"}},
    ]}
    r = any_fhir.post("", json=bundle, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201", "201"]
    patient_id = out["entry"][0]["resource"]["id"]
    org_id = out["entry"][1]["resource"]["id"]
    stored = any_fhir.get(f"/Patient/{patient_id}").json()
    assert stored["managingOrganization"]["reference"] == f"Organization/{org_id}"
    assert any_fhir.get(f"/Organization/{org_id}").status_code == 200


def test_transaction_failure_applies_nothing(any_fhir):
    before = _count(any_fhir, "Patient")
    doomed = create(any_fhir, patient())
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": _urn(), "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
        {"resource": dict(doomed, gender="male"),
         "request": {"method": "PUT", "url": f"Patient/{doomed['id']}", "ifMatch": 'W/"9"'}},
    ]}
    r = any_fhir.post("", json=bundle, headers=JSON_HEADERS)
    assert_outcome(r, 412)
    assert _count(any_fhir, "Patient") == before + 1
    assert any_fhir.get(f"/Patient/{doomed['id']}").json() == doomed


def test_transaction_with_invalid_entry_applies_nothing(any_fhir):
    before = _count(any_fhir, "Patient")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": _urn(), "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": _urn(), "resource": patient(gender="robot"), "request": {"method": "POST", "url": "Patient"}},
    ]}
    assert_outcome(any_fhir.post("", json=bundle, headers=JSON_HEADERS), 400)
    assert _count(any_fhir, "Patient") == before


def test_transaction_needs_no_engine_transactions(fhir):
    """FerretDB has no multi-document transactions: the application-level commit protocol
    (fhir_server/storage/transactions.py) makes the Bundle atomic all the same."""
    before = _count(fhir, "Patient")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": _urn(), "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = fhir.post("", json=bundle, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert _count(fhir, "Patient") == before + 1


def test_bundle_request_errors(fhir):
    assert_outcome(fhir.post("", json={"resourceType": "Bundle", "type": "collection"}, headers=JSON_HEADERS), 400)
    assert_outcome(fhir.post("", json=patient(), headers=JSON_HEADERS), 400)
    bad_entry = {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": patient()}]}
    r = fhir.post("", json=bad_entry, headers=JSON_HEADERS)
    assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"] == "400"
    foreign = {"resourceType": "Bundle", "type": "batch",
               "entry": [{"request": {"method": "GET", "url": "http://elsewhere.example/fhir/Patient/1"}}]}
    assert fhir.post("", json=foreign, headers=JSON_HEADERS).json()["entry"][0]["response"]["status"] == "400"
    nested = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": {"resourceType": "Bundle", "type": "batch"}, "request": {"method": "POST", "url": ""}}]}
    out = fhir.post("", json=nested, headers=JSON_HEADERS).json()
    assert out["entry"][0]["response"]["status"] in ("400", "405")


def test_batch_patch_entry_uses_binary(any_fhir):
    import base64
    import json

    created = create(any_fhir, patient())
    ops = base64.b64encode(json.dumps([{"op": "replace", "path": "/gender", "value": "male"}]).encode()).decode()
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": ops},
         "request": {"method": "PATCH", "url": f"Patient/{created['id']}"}}]}
    out = any_fhir.post("", json=bundle, headers=JSON_HEADERS).json()
    assert out["entry"][0]["response"]["status"] == "200"
    assert any_fhir.get(f"/Patient/{created['id']}").json()["gender"] == "male"


def test_transaction_resolves_conditional_references(any_fhir):
    """R4 http.html#trules: `Type?criteria` references are resolved inside the transaction; no match
    or several matches fail it, and then nothing is applied."""
    rpps = f"8{uuid.uuid4().int % 10**10:010d}"
    doctor = create(any_fhir, {"resourceType": "Practitioner",
                               "identifier": [{"system": "urn:test:rpps", "value": rpps}]})

    def bundle(criteria):
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": _urn(), "request": {"method": "POST", "url": "Patient"},
             "resource": patient(generalPractitioner=[{"reference": f"Practitioner?{criteria}"}])}]}

    r = any_fhir.post("", json=bundle(f"identifier=urn:test:rpps|{rpps}"), headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    pid = r.json()["entry"][0]["response"]["location"].split("/Patient/")[1].split("/")[0]
    stored = any_fhir.get(f"/Patient/{pid}").json()
    assert stored["generalPractitioner"] == [{"reference": f"Practitioner/{doctor['id']}"}]
    before = _count(any_fhir, "Patient")
    assert_outcome(any_fhir.post("", json=bundle("identifier=urn:test:rpps|none"), headers=JSON_HEADERS), 404)
    create(any_fhir, {"resourceType": "Practitioner", "identifier": [{"system": "urn:test:rpps", "value": rpps}]})
    assert_outcome(any_fhir.post("", json=bundle(f"identifier=urn:test:rpps|{rpps}"), headers=JSON_HEADERS), 412)
    assert _count(any_fhir, "Patient") == before


def test_a_large_batch_keeps_each_entry_with_its_own_resource(any_fhir):
    """A Bundle over 64 KiB is read in a worker process, and its entries' resources come back as one
    blob with where each starts and ends (fhir/offload.py, WithBlob): entries with and without a
    resource, of different sizes, in any order, must each get their own."""
    tag = uuid.uuid4().hex
    existing = create(any_fhir, patient())
    sizes = [70_000, 10, 3, 20_000]
    families = [f"{tag}-{i}-" + "x" * n for i, n in enumerate(sizes)]
    entry = [
        {"resource": patient(name=[{"family": families[0]}]), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
        {"resource": patient(name=[{"family": families[1]}]), "request": {"method": "POST", "url": "Patient"}},
        {"resource": "not an object", "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(name=[{"family": families[2]}]), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        {"resource": patient(name=[{"family": families[3]}]), "request": {"method": "POST", "url": "Patient"}},
    ]
    r = any_fhir.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entry}, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert [e["response"]["status"][:3] for e in out] == ["201", "200", "201", "400", "201", "404", "201"]
    created = [e["response"]["location"].split("/_history")[0].rsplit("/", 2)[-1] for e in (out[0], out[2], out[4], out[6])]
    stored = [any_fhir.get(f"/Patient/{pid}").json()["name"][0]["family"] for pid in created]
    assert stored == families
