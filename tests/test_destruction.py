"""Closure and destruction of a record (issue 11, items 4-5; README "Closure and destruction").

The patient closes their record (record Consent inactive): professionals lose it at once, the
patient keeps their copy. `POST Patient/{id}/$destroy` by the patient destroys it; afterwards no
collection or GridFS file holds the patient's id, INS or document contents (AuditEvents, the chain
heads and the receipt aside), every API path answers 404/410 or nothing, ids never come back at
version 1, the access history stays readable and verifiable, the receipt is a JWS the published
keys verify, and a new record for the same INS starts empty. A destruction killed mid-purge is
finished by the restarted server, and running it again changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid

import bson
import httpx
import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from tests.auth_helpers import add_client, add_user, backend_token, fhir_client, public_jwks, rsa_key, run_db, user_token
from tests.conftest import ROOT, start_server, stop_server
from tests.dmp import authorization, document, record_consent
from tests.helpers import new_ins

FHIR = {"Content-Type": "application/fhir+json"}
INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"
KEPT = {"AuditEvent", "_audit_heads"}  # the access history and its chain heads (and the receipt, inside)


def _post(c: httpx.Client, resource: dict) -> dict:
    r = c.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r.json()


def _scan(server, needles: list[bytes]) -> list[str]:
    """Every document of every collection (GridFS chunks included) holding one of `needles`, as
    `collection:needle`, outside the kept collections."""

    async def work(db):
        hits = []
        for name in sorted(await db.list_collection_names()):
            if name in KEPT:
                continue
            async for doc in db[name].find({}):
                raw = bson.encode(doc)
                hits += [f"{name}:{n.decode()}" for n in needles if n in raw]
        return hits

    return run_db(server, work)


def _cli(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FHIR_MONGODB_URI": server.mongodb_uri, "FHIR_DATABASE": server.database}
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def world(ferretdb_uri):
    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false"})
    try:
        key = rsa_key()
        add_client(s, "operator", "confidential-asymmetric", "system/*.cruds", redirect_uris=(), jwks=public_jwks(key),
                   operator=True)
        add_client(s, "app", "public", "openid fhirUser launch/patient patient/*.cruds user/*.cruds")
        w = {"server": s, "operator": backend_token(s, "operator", key, "system/*.cruds")["access_token"],
             "mark": "MARK" + uuid.uuid4().hex, "ins": new_ins()}
        with fhir_client(s, w["operator"]) as op:
            dr = _post(op, {"resourceType": "Practitioner", "name": [{"family": "Dr Keeps"}],
                            "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "10000000009"}]})["id"]
            pid = _post(op, {"resourceType": "Patient", "name": [{"family": "Gone"}],
                             "identifier": [{"system": INS_SYSTEM, "value": w["ins"]}]})["id"]
            other = _post(op, {"resourceType": "Patient", "name": [{"family": "Stays"}],
                               "identifier": [{"system": INS_SYSTEM, "value": new_ins()}]})["id"]
            record = _post(op, record_consent(pid))["id"]
            _post(op, record_consent(other))
            _post(op, authorization(pid, [f"Practitioner/{dr}"]))
            big = (w["mark"] * 400).encode()  # over the inline limit: GridFS
            big_bin = op.post("/Binary", content=big, headers={"Content-Type": "application/pdf",
                                                                  "X-Security-Context": f"Patient/{pid}"})
            assert big_bin.status_code == 201, big_bin.text
            small_bin = _post(op, {"resourceType": "Binary", "contentType": "text/plain",
                                   "data": base64.b64encode(w["mark"].encode()).decode(),
                                   "securityContext": {"reference": f"Patient/{pid}"}})["id"]
            doc = _post(op, document(pid, author=f"Practitioner/{dr}", description=w["mark"]))["id"]
            changed = {**document(pid, author=f"Practitioner/{dr}", description=w["mark"] + " v2"), "id": doc}
            assert op.put(f"/DocumentReference/{doc}", json=changed, headers=FHIR).status_code == 200
            deleted = _post(op, document(pid, description=w["mark"] + " deleted"))["id"]
            assert op.delete(f"/DocumentReference/{deleted}").status_code in (200, 204)
            lst = _post(op, {"resourceType": "List", "status": "current", "mode": "working", "title": w["mark"],
                             "subject": {"reference": f"Patient/{pid}"}})["id"]
            other_doc = _post(op, document(other, author=f"Practitioner/{dr}"))["id"]
            stored = {}  # the stored JSON of every version, as served
            for rtype, rid, versions in (("DocumentReference", doc, 2), ("Patient", pid, 1),
                                         ("DocumentReference", deleted, 1), ("Binary", small_bin, 1)):
                for v in range(1, versions + 1):
                    r = op.get(f"/{rtype}/{rid}/_history/{v}")
                    assert r.status_code == 200
                    stored[f"{rtype}/{rid}/{v}"] = hashlib.sha256(r.content).hexdigest()
        uname = "u" + uuid.uuid4().hex[:10]  # an account name that does not repeat the patient's id
        add_user(s, uname, "patient", f"Patient/{pid}")
        add_user(s, "dr.keeps", "practitioner", f"Practitioner/{dr}", rpps="10000000009")
        w.update(pid=pid, other=other, record=record, doc=doc, deleted=deleted, list=lst, small_bin=small_bin,
                 big_bin=big_bin.json()["id"], other_doc=other_doc, dr=dr, stored=stored,
                 patient=user_token(s, "app", uname, "launch/patient patient/*.cruds")["access_token"],
                 pro=user_token(s, "app", "dr.keeps", "openid fhirUser user/*.cruds")["access_token"])
        yield w
    finally:
        stop_server(s)


def test_closing_is_immediate_and_leaves_the_patient_their_copy(world):
    s, pid = world["server"], world["pid"]
    with fhir_client(s, world["pro"]) as pro:
        assert pro.get(f"/DocumentReference/{world['doc']}").status_code == 200  # authorized while open
    with fhir_client(s, world["patient"]) as me:
        r = me.post(f"/Patient/{pid}/$destroy")
        assert r.status_code == 409 and "open" in r.text  # close first
        closed = {**record_consent(pid, status="inactive"), "id": world["record"]}
        assert me.put(f"/Consent/{world['record']}", json=closed, headers=FHIR).status_code == 200
    with fhir_client(s, world["pro"]) as pro:
        assert pro.get(f"/DocumentReference/{world['doc']}").status_code == 404
        assert pro.post("/DocumentReference", json=document(pid, author=f"Practitioner/{world['dr']}"),
                        headers=FHIR).status_code == 403
        assert pro.post(f"/Patient/{pid}/$destroy").status_code in (403, 404)  # never a professional's to ask
    with fhir_client(s, world["patient"]) as me:  # the grace period: the patient downloads their copy
        r = me.get(f"/Patient/{pid}/$everything", params={"_count": 100})
        assert r.status_code == 200
        got = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json()["entry"]}
        assert {f"DocumentReference/{world['doc']}", f"Binary/{world['small_bin']}", f"List/{world['list']}"} <= got
    with fhir_client(s, world["operator"]) as op:  # an administrator's service waits for the grace period
        assert op.post(f"/Patient/{pid}/$destroy").status_code == 400  # no documented request
        r = op.post(f"/Patient/{pid}/$destroy", params={"reason": "patient's letter of 1 March"})
        assert r.status_code == 409 and "grace period" in r.text
    out = _cli(s, "records", "list")
    assert out.returncode == 0, out.stderr
    listed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [x["destruction"] for x in listed if x.get("patient") == pid] == ["waiting"]


@pytest.fixture(scope="module")
def destroyed(world):
    with fhir_client(world["server"], world["patient"]) as me:
        r = me.post(f"/Patient/{world['pid']}/$destroy", json={"resourceType": "Parameters", "parameter": [
            {"name": "reason", "valueString": "I want it gone"}]}, headers=FHIR)
    assert r.status_code == 200, r.text
    return r


def test_the_receipt_is_signed_and_lists_what_was_removed(world, destroyed):
    params = {p["name"]: p for p in destroyed.json()["parameter"]}
    jwks = httpx.get(world["server"].base + "/auth/jwks").json()
    payload = json.loads(jws.deserialize_compact(params["receipt"]["valueString"], KeySet.import_key_set(jwks)).payload)
    assert payload["patient"] == f"Patient/{world['pid']}" and payload["reason"] == "I want it gone"
    assert payload["counts"]["DocumentReference"] == {"resources": 2, "versions": 4}  # doc v1-2, deleted v1-2
    assert payload["counts"]["Binary"]["resources"] == 2 and payload["counts"]["binaryContents"] == 1
    assert payload["counts"]["Consent"]["resources"] == 2 and payload["counts"]["List"]["resources"] == 1
    hashes = {f"{r['resource']}/{v['v']}": v["sha256"] for r in payload["removed"] for v in r["versions"]}
    assert {k: hashes[k] for k in world["stored"]} == world["stored"]  # the stored JSON's SHA-256
    receipt = params["auditEvent"]["valueReference"]["reference"]
    with fhir_client(world["server"], world["operator"]) as auditor:
        event = auditor.get(f"/{receipt}").json()  # the receipt's stable address, in the audit trail
    assert event["action"] == "D" and event["entity"][0]["what"]["reference"] == f"Patient/{world['pid']}"
    assert base64.b64decode(event["entity"][1]["detail"][0]["valueBase64Binary"]).decode() == \
        params["receipt"]["valueString"]


def test_nothing_of_the_record_remains_outside_the_audit_trail(world, destroyed):
    needles = [world["pid"].encode(), world["ins"].encode(), world["mark"].encode(),
               base64.b64encode(world["mark"].encode())[:40]]
    assert _scan(world["server"], needles) == []
    assert _scan(world["server"], [world["other"].encode(), world["other_doc"].encode()])  # others' data stays


@pytest.mark.parametrize("who", ["patient", "operator"])
def test_every_path_answers_gone_or_nothing(world, destroyed, who):
    pid, doc = world["pid"], world["doc"]
    with fhir_client(world["server"], world[who]) as c:
        for path in (f"/Patient/{pid}", f"/Patient/{pid}/_history/1", f"/DocumentReference/{doc}",
                     f"/DocumentReference/{doc}/_history/2", f"/Binary/{world['big_bin']}",
                     f"/Binary/{world['small_bin']}", f"/List/{world['list']}", f"/Consent/{world['record']}",
                     f"/Patient/{pid}/$everything"):
            assert c.get(path).status_code in (404, 410), path
        assert c.get(f"/Binary/{world['big_bin']}", headers={"Accept": "application/pdf"}).status_code in (404, 410)
        history = c.get(f"/DocumentReference/{doc}/_history")
        assert history.status_code == 404 or "entry" not in history.json()
        for path, params in (("/DocumentReference", {"patient": pid}), ("/Consent", {"patient": pid}),
                             ("/Patient", {"_id": pid, "_revinclude": "DocumentReference:subject"}),
                             ("/DocumentReference", {"_id": doc, "_include": "DocumentReference:subject"}),
                             ("/Binary", {"securitycontext": f"Patient/{pid}"})):
            r = c.get(path, params=params)
            assert r.status_code in (200, 403) and "entry" not in r.json(), (path, r.text)
    if who == "operator":  # those who could see them are told they are gone
        with fhir_client(world["server"], world["operator"]) as op:
            assert op.get(f"/DocumentReference/{doc}").status_code == 410


def test_the_access_history_survives_and_verifies(world, destroyed):
    pid = world["pid"]
    for who in ("operator", "patient"):  # an auditor; the patient with the token they still hold
        with fhir_client(world["server"], world[who]) as c:
            r = c.get("/AuditEvent", params={"patient": pid, "_count": 200})
            assert r.status_code == 200
            subtypes = [e["resource"]["subtype"][0]["code"] for e in r.json()["entry"]]
            assert subtypes.count("record-destruction") == 1 and "read" in subtypes
    with fhir_client(world["server"], world["operator"]) as op:
        r = op.get("/AuditEvent/$verify")
        assert r.status_code == 200 and [i["severity"] for i in r.json()["issue"]] == ["information"], r.text


def test_ids_never_come_back_and_the_ins_opens_an_empty_record(world, destroyed):
    with fhir_client(world["server"], world["operator"]) as op:
        fresh = _post(op, {"resourceType": "Patient", "name": [{"family": "Again"}],
                           "identifier": [{"system": INS_SYSTEM, "value": world["ins"]}]})  # the INS is free again
        assert fresh["id"] != world["pid"]
        consent = _post(op, record_consent(fresh["id"]))
        r = op.get(f"/Patient/{fresh['id']}/$everything")
        found = [e["resource"] for e in r.json()["entry"]]
        kinds = sorted(x["resourceType"] for x in found)
        # its own audit trail and the Provenance of its two writes only
        assert [k for k in kinds if k not in ("AuditEvent", "Provenance")] == ["Consent", "Patient"]
        targets = {t["reference"].split("/_history/")[0] for x in found if x["resourceType"] == "Provenance"
                   for t in x["target"]}
        assert targets == {f"Patient/{fresh['id']}", f"Consent/{consent['id']}"}
        r = op.put(f"/DocumentReference/{world['doc']}", json={**document(fresh["id"]), "id": world["doc"]},
                   headers=FHIR)
        assert r.status_code == 201 and r.json()["meta"]["versionId"] == "3"  # after the destroyed version 2
        assert op.get(f"/DocumentReference/{world['doc']}/_history/1").status_code == 404  # the past stays gone


def test_the_retention_tools_list_it_and_running_again_changes_nothing(world, destroyed):
    for _ in range(2):
        out = _cli(world["server"], "records", "destroy-due")
        assert out.returncode == 0 and out.stdout == "", out.stderr + out.stdout
    out = _cli(world["server"], "records", "list")
    done = [json.loads(line) for line in out.stdout.splitlines() if '"done"' in line]
    assert len(done) == 1 and world["pid"] not in out.stdout
    assert done[0]["receipt"] == destroyed.json()["parameter"][1]["valueReference"]["reference"]


def _small_record(c: httpx.Client) -> str:
    """A closed record of 6 resources of 4 types: 13 removal steps (3 per type, 1 INS claim)."""
    pid = _post(c, {"resourceType": "Patient", "identifier": [{"system": INS_SYSTEM, "value": new_ins()}]})["id"]
    record = _post(c, record_consent(pid))["id"]
    for i in range(3):
        _post(c, document(pid, description=f"note {i}"))
    _post(c, {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk=",
              "securityContext": {"reference": f"Patient/{pid}"}})
    closed = {**record_consent(pid, status="inactive"), "id": record}
    assert c.put(f"/Consent/{record}", json=closed, headers=FHIR).status_code == 200
    return pid


@pytest.mark.parametrize("crash_after", [1, 4, 8, 13])
def test_a_destruction_killed_mid_purge_is_finished_at_restart(ferretdb_uri, crash_after):
    database = "t_" + uuid.uuid4().hex[:12]
    env = {"FHIR_DATABASE": database, "FHIR_DESTRUCTION_GRACE_SECONDS": "0"}
    crashing = start_server(ferretdb_uri, {**env, "FHIR_TEST_DESTRUCTION_CRASH_AFTER": str(crash_after)})
    try:
        with crashing.client() as c:
            pid = _small_record(c)
            with pytest.raises(httpx.HTTPError):  # the process dies in the middle of the purge
                c.post(f"/Patient/{pid}/$destroy", params={"reason": "patient's request"})
    finally:
        stop_server(crashing)
    assert crashing.process.returncode == 71
    restarted = start_server(ferretdb_uri, env)  # start-up resumes the interrupted destruction
    try:
        with restarted.client() as c:
            assert c.get(f"/Patient/{pid}").status_code == 410
            assert "entry" not in c.get("/DocumentReference", params={"patient": pid}).json()
            assert _scan(restarted, [pid.encode()]) == []
            for _ in range(2):  # again: harmless
                assert _cli(restarted, "records", "destroy-due").returncode == 0
            events = c.get("/AuditEvent", params={"patient": pid, "_count": 500}).json()["entry"]
            receipts = [e for e in events if e["resource"]["subtype"][0]["code"] == "record-destruction"]
            assert len(receipts) == 1
            assert [i["severity"] for i in c.get("/AuditEvent/$verify").json()["issue"]] == ["information"]
    finally:
        stop_server(restarted)
