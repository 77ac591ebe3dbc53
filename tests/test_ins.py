"""French national identifiers on write: the patient's INS (NIR + key) and the professional's RPPS /
IDNPS, and the rule that an INS identifies exactly one record.

Expectations come from the published rules (FR Core; CNAM's NIR key: 97 − (NIR mod 97), with
Corsica's 2A counting as 19 and 2B as 18; RPPS: 11 digits with a Luhn check digit), computed here,
not by the server's code.
"""

from __future__ import annotations

import concurrent.futures
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import JSON_HEADERS, assert_outcome, create, new_ins

INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
RPPS = "https://rpps.esante.gouv.fr"


def key_of(nir: str) -> int:
    digits = nir[:5] + {"2A": "19", "2B": "18"}.get(nir[5:7], nir[5:7]) + nir[7:]
    return 97 - int(digits) % 97


nirs = st.builds(
    lambda sex, year, month, dept, commune, order: f"{sex}{year:02d}{month:02d}{dept}{commune:03d}{order:03d}",
    st.sampled_from("12"), st.integers(0, 99), st.integers(1, 12),
    st.one_of(st.integers(1, 95).map(lambda d: f"{d:02d}").filter(lambda d: d != "20"), st.sampled_from(["2A", "2B"])),
    st.integers(1, 990), st.integers(1, 999))


def _patient(value: str, system: str = INS_NIR) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}


def _verdict(fhir, resource: dict) -> str:
    r = fhir.post(f"/{resource['resourceType']}/$validate", json=resource, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    issues = r.json()["issue"]
    return "ok" if all(i["severity"] in ("information", "warning") for i in issues) else issues[0]["code"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nir=nirs, wrong=st.integers(1, 96))
def test_ins_key_is_checked(fhir, nir, wrong):
    key = key_of(nir)
    assert _verdict(fhir, _patient(f"{nir}{key:02d}")) == "ok"
    assert _verdict(fhir, _patient(f"{nir}{(key + wrong) % 97 or 97:02d}")) == "business-rule"


def test_malformed_ins_is_422_with_the_identifier_named_and_nothing_stored(fhir):
    for value in ("2061275111005", "20612751110056", "206127511100564x", "9061275111005xx", "2061A75111005"
                  + "64"):
        r = fhir.post("/Patient", json=_patient(value), headers=JSON_HEADERS)
        body = assert_outcome(r, 422, "business-rule")
        assert body["issue"][0]["expression"] == ["Patient.identifier[0].value"]
        assert fhir.get("/Patient", params={"identifier": f"{INS_NIR}|{value}"}).json()["total"] == 0
    # the example from the standards digest: 2061275111005 has key 64
    assert _verdict(fhir, _patient("206127511100564")) == "ok"


def test_rpps_and_idnps_are_checked(fhir):
    def practitioner(system, value):
        return {"resourceType": "Practitioner", "identifier": [{"system": system, "value": value}]}

    assert _verdict(fhir, practitioner(RPPS, "10000000009")) == "ok"
    assert _verdict(fhir, practitioner(RPPS, "10000000001")) == "business-rule"  # Luhn
    assert _verdict(fhir, practitioner(RPPS, "1000000000")) == "business-rule"
    assert _verdict(fhir, practitioner("urn:oid:1.2.250.1.71.4.2.1", "810000000009")) == "ok"
    assert _verdict(fhir, practitioner("urn:oid:1.2.250.1.71.4.2.1", "810000000001")) == "business-rule"


def test_an_ins_identifies_exactly_one_record(any_fhir):
    ins = new_ins()
    first = create(any_fhir, _patient(ins))
    assert_outcome(any_fhir.post("/Patient", json=_patient(ins), headers=JSON_HEADERS), 409, "duplicate")
    other = create(any_fhir, _patient(new_ins()))
    # an update cannot take another patient's INS either
    r = any_fhir.put(f"/Patient/{other['id']}", json={**_patient(ins), "id": other["id"]}, headers=JSON_HEADERS)
    assert_outcome(r, 409)
    # nor a transaction entry; and nothing of the transaction is applied
    marker = f"urn:test:{uuid.uuid4().hex}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": marker, "value": "1"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": _patient(ins), "request": {"method": "POST", "url": "Patient"}}]}
    assert any_fhir.post("", json=bundle, headers=JSON_HEADERS).status_code == 409
    assert any_fhir.get("/Patient", params={"identifier": f"{marker}|1"}).json()["total"] == 0
    # the holder keeps it through its own updates; once deleted, the INS is free again
    assert any_fhir.put(f"/Patient/{first['id']}", json={**_patient(ins), "id": first["id"], "gender": "female"},
                        headers=JSON_HEADERS).status_code == 200
    assert any_fhir.delete(f"/Patient/{first['id']}").status_code in (200, 204)
    create(any_fhir, _patient(ins))


def test_twenty_concurrent_creates_with_one_ins_give_exactly_one_record(server, fhir):
    ins = new_ins()

    def post(_):
        with server.client() as c:
            return c.post("/Patient", json=_patient(ins), headers=JSON_HEADERS).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = sorted(pool.map(post, range(20)))
    assert statuses == [201] + [409] * 19, statuses
    assert fhir.get("/Patient", params={"identifier": f"{INS_NIR}|{ins}"}).json()["total"] == 1


def test_reindex_claims_the_ins_of_older_patients_and_lists_duplicates(server, fhir):
    """Patients written before one INS meant one record: `fhir-server reindex --type Patient` claims
    their INS, and lists (exit 1) those that share one, for an administrator to settle."""
    import os
    import subprocess
    import sys

    import orjson
    from pymongo import MongoClient

    ins = new_ins()
    a = create(fhir, _patient(ins))
    with MongoClient(server.mongodb_uri) as mc:
        db = mc[server.database]
        db["_unique_keys"].delete_many({"owner": f"Patient/{a['id']}"})  # as if written before the rule
        twin = db["Patient"].find_one({"_id": a["id"]})
        twin_id = "twin-" + uuid.uuid4().hex[:12]
        body = orjson.loads(twin["_json"])
        twin.update({"_id": twin_id, "_json": orjson.dumps({**body, "id": twin_id})})
        db["Patient"].insert_one(twin)
    env = {**os.environ, "FHIR_MONGODB_URI": server.mongodb_uri, "FHIR_DATABASE": server.database}
    out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "reindex", "--type", "Patient"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    conflicts = [line for line in out.stderr.splitlines() if line.startswith("conflict: ")]
    assert len(conflicts) == 1 and ("Patient/" + twin_id in conflicts[0] or f"Patient/{a['id']}" in conflicts[0])
    assert_outcome(fhir.post("/Patient", json=_patient(ins), headers=JSON_HEADERS), 409)
