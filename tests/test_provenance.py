"""A Provenance for every write (issue 10, item 6; R4 Provenance and http.html#provenance).

Each create, update, patch and delete — Bundle entries (batch and transaction) and conditional
writes included — records exactly one Provenance: target the version written, `recorded` its
instant, activity CREATE/UPDATE/DELETE (v3-DataOperation), agents the user (`fhirUser`) and the
client application (acting for its Organization when it has one), reason the purpose of use. A
client's own Provenance in `X-Provenance` is kept when it describes this write by this caller, and
refused (400, nothing written) otherwise. Provenances are read through the patient's consent like
the resource they describe, and they validate against R4 with the HAPI validator.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.auth_helpers import user_token
from tests.conftest import start_server, stop_server
from tests.consent_world import FHIR
from tests.dmp import document

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PATIENT_EXTENSION = "urn:fhir-dmp:StructureDefinition/provenance-patient"


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


def _provenances(c: httpx.Client, ref: str) -> list[dict]:
    """The Provenances whose target is `ref` (Type/id), oldest first."""
    r = c.get("/Provenance", params={"target": ref, "_count": "100"})
    assert r.status_code == 200, r.text
    return sorted((e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"),
                  key=lambda p: p["target"][0]["reference"].rsplit("/", 1)[1].zfill(6))


def _activity(p: dict) -> str:
    [coding] = p["activity"]["coding"]
    assert coding["system"] == DATA_OPERATION
    return coding["code"]


def _agent(p: dict, code: str) -> dict:
    [agent] = [a for a in p["agent"] if a["type"]["coding"][0]["code"] == code]
    return agent


def _identifier() -> dict:
    return {"system": "urn:test:provenance", "value": uuid.uuid4().hex}


def test_each_write_of_a_document_records_one_provenance_of_the_version_by_the_user_and_app(w):
    with w.client("auth") as c:
        created = c.post("/DocumentReference", json=document(w.a, author=w.pr("auth")), headers=FHIR)
        assert created.status_code == 201, created.text
        doc = created.json()
        did = doc["id"]
        updated = c.put(f"/DocumentReference/{did}", json={**doc, "description": "v2"}, headers=FHIR)
        assert updated.status_code == 200, updated.text
        patched = c.patch(f"/DocumentReference/{did}", content=b'[{"op":"add","path":"/description","value":"v3"}]',
                          headers={"Content-Type": "application/json-patch+json"})
        assert patched.status_code == 200, patched.text
        assert c.delete(f"/DocumentReference/{did}").status_code in (200, 204)
        provs = _provenances(c, f"DocumentReference/{did}")
    assert [p["target"] for p in provs] == [[{"reference": f"DocumentReference/{did}/_history/{v}"}]
                                            for v in (1, 2, 3, 4)]
    assert [_activity(p) for p in provs] == ["CREATE", "UPDATE", "UPDATE", "DELETE"]
    stamped = [doc, updated.json(), patched.json()]
    for p, version in zip(provs, stamped):
        assert p["recorded"] == version["meta"]["lastUpdated"]  # the write's own instant
    for p in provs:
        assert _agent(p, "author")["who"] == {"reference": w.pr("auth")}
        assert _agent(p, "enterer")["who"]["identifier"]["value"] == "app"  # the client application
        assert p["extension"] == [{"url": PATIENT_EXTENSION, "valueReference": {"reference": f"Patient/{w.a}"}}]
        assert "reason" not in p  # the token carries no purpose of use


def test_a_backend_client_is_the_author_acting_for_its_organization(w):
    with w.client("org-o") as c:
        r = c.post("/Practitioner", json={"resourceType": "Practitioner", "name": [{"family": "Prov"}]}, headers=FHIR)
        assert r.status_code == 201, r.text
    with w.client("operator") as c:
        [p] = _provenances(c, f"Practitioner/{r.json()['id']}")
    [agent] = p["agent"]
    assert agent["type"]["coding"][0]["code"] == "author"
    assert agent["who"]["identifier"]["value"] == "org-o" and agent["who"]["type"] == "Device"
    assert agent["onBehalfOf"] == {"reference": f"Organization/{w.org_o}"}
    assert "extension" not in p  # the directory is nobody's record


def test_the_reason_is_the_purpose_of_use_of_the_token(w):
    token = user_token(w.server, "app", "dr.btg", "openid fhirUser user/*.cruds offline_access", patient=w.a,
                       purpose_of_use="BTG", btg_reason="unconscious, emergency")["access_token"]
    with w.client(token) as c:  # break-glass reads a record; the directory is written as usual
        r = c.post("/Practitioner", json={"resourceType": "Practitioner", "name": [{"family": "Btg"}]}, headers=FHIR)
        assert r.status_code == 201, r.text
    with w.client("operator") as c:
        [p] = _provenances(c, f"Practitioner/{r.json()['id']}")
    assert p["reason"] == [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                        "code": "BTG"}], "text": "unconscious, emergency"}]
    assert _agent(p, "author")["who"] == {"reference": w.pr("btg")}


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_every_bundle_entry_records_its_own_provenance(w, kind):
    with w.client("auth") as c:
        did = c.post("/DocumentReference", json=document(w.a, author=w.pr("auth")), headers=FHIR).json()["id"]
        current = c.get(f"/DocumentReference/{did}").json()
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "DocumentReference"},
             "resource": document(w.a, author=w.pr("auth"))},
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "DocumentReference"},
             "resource": document(w.b, author=w.pr("auth"))},
            {"request": {"method": "PUT", "url": f"DocumentReference/{did}"},
             "resource": {**current, "description": kind}}]}
        r = c.post("/", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        locations = [e["response"]["location"] for e in r.json()["entry"]]
        for loc in locations:
            rtype, rid, _, version = loc.split("/fhir/")[1].split("/")
            provs = _provenances(c, f"{rtype}/{rid}")
            assert provs[-1]["target"] == [{"reference": f"{rtype}/{rid}/_history/{version}"}]
            assert len(provs) == int(version)  # one per version, no more
            assert _agent(provs[-1], "author")["who"] == {"reference": w.pr("auth")}
    assert [_activity(_provenances_of(w, loc)[-1]) for loc in locations] == ["CREATE", "CREATE", "UPDATE"]


def _provenances_of(w, location: str) -> list[dict]:
    rtype, rid = location.split("/fhir/")[1].split("/")[:2]
    with w.client("operator") as c:
        return _provenances(c, f"{rtype}/{rid}")


def _count(c: httpx.Client) -> int:
    r = c.get("/Provenance", params={"_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def test_a_failed_transaction_records_no_provenance(w):
    ident = _identifier()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "DocumentReference"},
         "resource": document(w.a, author=w.pr("auth"), identifier=[ident])},
        {"request": {"method": "PUT", "url": "DocumentReference/no-such-one"}, "resource": {"resourceType": "Patient"}}]}
    with w.client("operator") as op, w.client("auth") as c:
        before = _count(op)
        assert c.post("/", json=bundle, headers=FHIR).status_code == 400
        found = c.get("/DocumentReference", params={"identifier": f"{ident['system']}|{ident['value']}"}).json()
        assert not found.get("entry")
        assert _count(op) == before


def test_conditional_create_update_and_delete_record_provenance_only_for_what_they_write(w):
    ident = _identifier()
    query = f"identifier={ident['system']}|{ident['value']}"
    with w.client("auth") as c:
        body = document(w.a, author=w.pr("auth"), identifier=[ident])
        first = c.post("/DocumentReference", json=body, headers={**FHIR, "If-None-Exist": query})
        assert first.status_code == 201, first.text
        again = c.post("/DocumentReference", json=body, headers={**FHIR, "If-None-Exist": query})
        assert again.status_code == 200  # matched: nothing written
        did = first.json()["id"]
        assert [_activity(p) for p in _provenances(c, f"DocumentReference/{did}")] == ["CREATE"]
        r = c.put(f"/DocumentReference?{query}", json={**body, "description": "conditional"}, headers=FHIR)
        assert r.status_code == 200, r.text
        second = c.post("/DocumentReference", json=document(w.a, author=w.pr("auth"), identifier=[ident]),
                        headers=FHIR).json()["id"]
        r = c.delete(f"/DocumentReference?{query}")
        assert r.status_code == 200, r.text
        assert [_activity(p) for p in _provenances(c, f"DocumentReference/{did}")] == ["CREATE", "UPDATE", "DELETE"]
        assert [_activity(p) for p in _provenances(c, f"DocumentReference/{second}")] == ["CREATE", "DELETE"]


def _x_provenance(**extra) -> str:
    return json.dumps({"resourceType": "Provenance", **extra})


def test_a_client_provenance_is_kept_with_the_servers_target(w):
    supplied = _x_provenance(agent=[{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                    "provenance-participant-type", "code": "verifier"}]},
                                     "who": {"reference": w.pr("auth")}}],
                             occurredDateTime="2026-03-01T09:30:00+01:00",
                             policy=["urn:test:policy:consultation"])
    with w.client("auth") as c:
        r = c.post("/DocumentReference", json=document(w.a, author=w.pr("auth")),
                   headers={**FHIR, "X-Provenance": supplied})
        assert r.status_code == 201, r.text
        did = r.json()["id"]
        [p] = _provenances(c, f"DocumentReference/{did}")
        assert p["occurredDateTime"] == "2026-03-01T09:30:00+01:00" and p["policy"] == ["urn:test:policy:consultation"]
        assert p["agent"][0]["type"]["coding"][0]["code"] == "verifier"
        assert p["target"] == [{"reference": f"DocumentReference/{did}/_history/1"}] and _activity(p) == "CREATE"
        assert p["recorded"] == r.json()["meta"]["lastUpdated"]
        # on an update the client may name the target itself
        r = c.put(f"/DocumentReference/{did}", json={**r.json(), "description": "x"},
                  headers={**FHIR, "X-Provenance": _x_provenance(target=[{"reference": f"DocumentReference/{did}"}],
                                                                 agent=[{"who": {"reference": w.pr("auth")}}])})
        assert r.status_code == 200, r.text
        assert [_activity(p) for p in _provenances(c, f"DocumentReference/{did}")] == ["CREATE", "UPDATE"]


@pytest.mark.parametrize("case", ["another target", "another agent", "another agent beside me", "not JSON",
                                  "not a Provenance", "invalid Provenance", "a patient it names itself"])
def test_a_client_provenance_that_is_not_about_this_write_by_this_caller_is_refused(w, case):
    ident = _identifier()
    me = [{"who": {"reference": w.pr("auth")}}]
    header = {
        "another target": _x_provenance(target=[{"reference": f"DocumentReference/{w.doc_b}"}], agent=me),
        "another agent": _x_provenance(agent=[{"who": {"reference": w.pr("gp")}}]),
        "another agent beside me": _x_provenance(agent=[*me, {"who": {"reference": w.pr("gp")}}]),
        "not JSON": "{not json",
        "not a Provenance": json.dumps({"resourceType": "AuditEvent"}),
        "invalid Provenance": _x_provenance(agent=me, recorded="yesterday"),
        "a patient it names itself": None,
    }[case]
    with w.client("auth") as c:
        before = c.post("/DocumentReference", json=document(w.a, author=w.pr("auth")), headers=FHIR).json()
        if header is None:  # the patient extension is the server's: a client cannot file a Provenance elsewhere
            body = document(w.a, author=w.pr("auth"), identifier=[ident])
            supplied = _x_provenance(agent=me, extension=[{"url": PATIENT_EXTENSION,
                                                           "valueReference": {"reference": f"Patient/{w.b}"}}])
            r = c.post("/DocumentReference", json=body, headers={**FHIR, "X-Provenance": supplied})
            assert r.status_code == 201, r.text
            [p] = _provenances(c, f"DocumentReference/{r.json()['id']}")
            assert p["extension"] == [{"url": PATIENT_EXTENSION, "valueReference": {"reference": f"Patient/{w.a}"}}]
            return
        r = c.post("/DocumentReference", json=document(w.a, author=w.pr("auth"), identifier=[ident]),
                   headers={**FHIR, "X-Provenance": header})
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome" and "X-Provenance" in r.json()["issue"][0]["diagnostics"]
        found = c.get("/DocumentReference", params={"identifier": f"{ident['system']}|{ident['value']}"}).json()
        assert not found.get("entry")  # nothing written
        r = c.put(f"/DocumentReference/{before['id']}", json={**before, "description": "refused"},
                  headers={**FHIR, "X-Provenance": header})
        assert r.status_code == 400, r.text
        assert c.get(f"/DocumentReference/{before['id']}").json()["meta"] == before["meta"]  # no new version
        assert len(_provenances(c, f"DocumentReference/{before['id']}")) == 1
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": []}
        assert c.post("/", json=bundle, headers={**FHIR, "X-Provenance": header}).status_code == 400


def test_provenance_is_seen_by_who_may_see_the_record(w):
    with w.client("auth") as c:
        did = c.post("/DocumentReference", json=document(w.a, author=w.pr("auth")), headers=FHIR).json()["id"]
        [p] = _provenances(c, f"DocumentReference/{did}")
        assert c.get(f"/Provenance/{p['id']}").status_code == 200
        assert c.get(f"/Provenance/{p['id']}/_history/1").json()["id"] == p["id"]
        r = c.get("/DocumentReference", params={"_id": did, "_revinclude": "Provenance:target"})
        included = [e["resource"] for e in r.json()["entry"] if e["search"]["mode"] == "include"]
        assert [i["id"] for i in included] == [p["id"]]
        mine = c.get("/Provenance", params={"patient": w.a, "agent": w.pr("auth"), "_count": "1000"}).json()
        assert p["id"] in {e["resource"]["id"] for e in mine["entry"]}
    for stranger in ("none", "blocked", "bob"):  # not authorized on Alice, blocked, another patient
        with w.client(stranger) as c:
            assert c.get(f"/Provenance/{p['id']}").status_code == 404
            assert not _provenances(c, f"DocumentReference/{did}")
            r = c.get("/Provenance", params={"patient": w.a})
            assert r.status_code in (200, 403) and not [e for e in r.json().get("entry", [])
                                                        if e["search"]["mode"] == "match"]
    with w.client("alice") as c:  # the patient sees who wrote in her record
        assert c.get(f"/Provenance/{p['id']}").status_code == 200
        assert p["id"] in {e["resource"]["id"] for e in c.get("/Provenance", params={"_count": "1000"}).json()["entry"]}


def test_provenance_is_immutable(w):
    with w.client("operator") as c:
        [p] = _provenances(c, f"DocumentReference/{w.doc_b}")
        url = f"/Provenance/{p['id']}"
        assert c.put(url, json=p, headers=FHIR).status_code == 405
        assert c.patch(url, content=b"[]", headers={"Content-Type": "application/json-patch+json"}).status_code == 405
        assert c.delete(url).status_code == 405
        assert c.get(url).json() == p


def test_recorded_provenances_validate_against_r4_with_hapi(w):
    from tests.test_profiles import run_hapi

    with w.client("operator") as c:
        samples = [*_provenances(c, f"DocumentReference/{w.doc_a}"), *_provenances(c, f"Patient/{w.a}"),
                   *_provenances(c, f"Organization/{w.org_o}")]
        deleted = c.get("/Provenance", params={"agent": w.pr("auth"), "_count": "200"}).json()["entry"]
        samples += [e["resource"] for e in deleted if _activity(e["resource"]) == "DELETE"][:1]
        supplied = c.get("/Provenance", params={"agent": w.pr("auth"), "_count": "200"}).json()["entry"]
        samples += [e["resource"] for e in supplied if "occurredDateTime" in e["resource"]][:1]
    assert len(samples) >= 4 and {_activity(p) for p in samples} >= {"CREATE", "DELETE"}
    results = run_hapi([{"id": str(i), "profile": "http://hl7.org/fhir/StructureDefinition/Provenance",
                         "resource": p} for i, p in enumerate(samples)])
    for i, p in enumerate(samples):
        errors = [f"{x['location']}: {x['message']}" for x in results[str(i)]["issues"]
                  if x["severity"] in ("error", "fatal")]
        assert results[str(i)]["valid"] and not errors, (p, errors)


def test_on_native_transactions_each_entry_has_its_provenance_and_a_rollback_none(fhir_txn):
    ident = _identifier()
    org = {"resourceType": "Organization", "name": "Tx", "identifier": [ident]}
    ok = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Organization"}, "resource": org},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Practitioner"},
         "resource": {"resourceType": "Practitioner", "name": [{"family": "Tx"}]}}]}
    r = fhir_txn.post("", json=ok, headers=FHIR)
    assert r.status_code == 200, r.text
    for entry in r.json()["entry"]:
        rtype, rid, _, version = entry["response"]["location"].split("/fhir/")[1].split("/")
        [p] = _provenances(fhir_txn, f"{rtype}/{rid}")
        assert p["target"] == [{"reference": f"{rtype}/{rid}/_history/{version}"}] and _activity(p) == "CREATE"
    failing = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Organization"}, "resource": {**org, "name": "rolled back"}},
        {"request": {"method": "PUT", "url": "Practitioner/x"}, "resource": {"resourceType": "Patient"}}]}
    before = _count(fhir_txn)
    assert fhir_txn.post("", json=failing, headers=FHIR).status_code == 400
    orgs = fhir_txn.get("/Organization", params={"identifier": f"{ident['system']}|{ident['value']}"}).json()["entry"]
    assert len(orgs) == 1
    assert _count(fhir_txn) == before


def test_a_write_interrupted_after_its_history_version_gets_its_provenance_when_rolled_forward(ferretdb_uri):
    """Crash right after the history insert (the write's only atomic step): nothing is visible, and
    the next writer that finds the orphan version applies it with its Provenance."""
    database = "t_" + uuid.uuid4().hex[:12]
    rid = uuid.uuid4().hex
    body = {"resourceType": "Organization", "id": rid, "name": "first"}
    crashing = start_server(ferretdb_uri, {"FHIR_DATABASE": database, "FHIR_TEST_CRASH_AFTER_STEP": "1"})
    try:
        with crashing.client() as c:
            with pytest.raises(httpx.HTTPError):
                c.put(f"/Organization/{rid}", json=body, headers=FHIR)
    finally:
        stop_server(crashing)
    server = start_server(ferretdb_uri, {"FHIR_DATABASE": database})
    try:
        with server.client() as c:
            assert not _provenances(c, f"Organization/{rid}")  # nothing visible of the interrupted write
            r = c.put(f"/Organization/{rid}", json={**body, "name": "second"}, headers=FHIR)
            assert r.status_code in (200, 201), r.text
            assert r.json()["meta"]["versionId"] == "2"  # version 1 was rolled forward first
            provs = _provenances(c, f"Organization/{rid}")
            assert [p["target"][0]["reference"] for p in provs] == [f"Organization/{rid}/_history/{v}" for v in (1, 2)]
    finally:
        stop_server(server)


def test_a_masked_documents_provenances_are_masked_with_it(w):
    """A Provenance tells who wrote what, and when: masking a document masks its Provenances (the
    earlier ones included, and those of its attached content); the patient, its author and the
    patient's GP still see them, another authorized professional does not, not even by id or
    through a patient search; unmasking shows them again."""
    from tests.dmp import authorization

    pid, token = w.fresh_patient(gp=w.pr("gp"))
    w.tokens[f"p-{pid}"] = token
    with w.client("operator") as op:
        for who in ("auth", "gp", "author"):
            assert op.post("/Consent", json=authorization(pid, [w.pr(who)]), headers=FHIR).status_code == 201
    with w.client("author") as c:
        pdf = c.post("/Binary", json={"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0=",
                                      "securityContext": {"reference": f"Patient/{pid}"}}, headers=FHIR).json()["id"]
        doc = c.post("/DocumentReference", json=document(pid, author=w.pr("author"), content=[
            {"attachment": {"contentType": "application/pdf", "url": f"Binary/{pdf}"}}]), headers=FHIR).json()
        assert len(_provenances(c, f"DocumentReference/{doc['id']}")) == 1
    with w.client("auth") as c:
        assert len(_provenances(c, f"DocumentReference/{doc['id']}")) == 1  # not masked yet: seen
    masked = {**doc, "meta": {"security": [{"system": "urn:fhir-dmp:security", "code": "masked"}]}}
    with w.client(f"p-{pid}") as c:
        assert c.put(f"/DocumentReference/{doc['id']}", json=masked, headers=FHIR).status_code == 200
        mine = _provenances(c, f"DocumentReference/{doc['id']}")
        assert len(mine) == 2  # the patient sees both, each labelled
        assert all({"system": "urn:fhir-dmp:security", "code": "masked"} in p["meta"]["security"] for p in mine)
        assert _provenances(c, f"Binary/{pdf}")
    with w.client("auth") as c:
        assert _provenances(c, f"DocumentReference/{doc['id']}") == []
        assert _provenances(c, f"Binary/{pdf}") == []
        assert c.get(f"/Provenance/{mine[0]['id']}").status_code == 404
        r = c.get("/Provenance", params={"patient": pid, "_count": "100"})
        assert doc["id"] not in r.text and pdf not in r.text
    with w.client("gp") as c:  # the GP sees the patient's masked documents, and so their Provenances
        assert len(_provenances(c, f"DocumentReference/{doc['id']}")) == 2
    with w.client("author") as c:  # the author, the Provenances of their own writes
        [own] = _provenances(c, f"DocumentReference/{doc['id']}")
        assert own["agent"][0]["who"]["reference"] == w.pr("author")
    with w.client(f"p-{pid}") as c:  # unmasked: seen again
        current = c.get(f"/DocumentReference/{doc['id']}").json()
        plain = {k: v for k, v in current.items() if k != "meta"}
        assert c.put(f"/DocumentReference/{doc['id']}", json=plain, headers=FHIR).status_code == 200
    with w.client("auth") as c:
        assert len(_provenances(c, f"DocumentReference/{doc['id']}")) == 3
