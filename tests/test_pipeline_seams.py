"""The seams the next features plug into, exercised with an app built in this process:
a policy injected into the decision point (its database filter keeps totals, pages and next links
exact on both engines), hooks observing the pipeline, the number of reads behind a PATCH, and a
transaction's reads seeing its own earlier writes (its unit of work)."""

from __future__ import annotations

import json
import uuid

import pytest
from pymongo import monitoring

from fhir_server.access.decision import Policy
from fhir_server.records.hooks import Hook
from tests.auth_helpers import add_client, add_user, backend_token, fhir_client, public_jwks, rsa_key, user_token
from tests.dmp import document, record_consent
from tests.inprocess import InProcessServer

FHIR = {"Content-Type": "application/fhir+json"}
HIDDEN = "urn:test:policy-hidden"


class HideTagged(Policy):
    """Hides resources tagged HIDDEN|hide from everyone: a database filter plus the same per-resource rule."""

    def restricts(self, principal, state, perm, rtype):
        return True

    def db_filter(self, principal, state, perm, rtype, within):
        return {"t__tag": {"$ne": f"{HIDDEN}|hide"}}

    def may_read(self, principal, state, rtype, resource):
        return not any(t.get("system") == HIDDEN for t in (resource.get("meta") or {}).get("tag", []))


class Recorder(Hook):
    def __init__(self):
        self.events = []

    async def started(self, event):
        self.events.append(("started", event.interaction.kind, event.request_id))

    async def disclosed(self, event, versions):
        self.events.append(("disclosed", event.interaction.kind, tuple(f"{v.type}/{v.id}" for v in versions)))

    async def written(self, event, before, after):
        self.events.append(("written", event.interaction.kind, before.version if before else None, after.version))

    async def finished(self, event, status, error):
        self.events.append(("finished", event.interaction.kind, status))


def _backend(server, scope="system/*.cruds"):
    key = rsa_key()
    cid = "b-" + uuid.uuid4().hex[:8]
    add_client(server, cid, "confidential-asymmetric", scope, redirect_uris=(), jwks=public_jwks(key), operator=True)
    return fhir_client(server, backend_token(server, cid, key, scope)["access_token"])


@pytest.fixture(params=["ferretdb", "mongoeco"])
def engine_uri(request):
    return request.getfixturevalue("ferretdb_uri" if request.param == "ferretdb" else "mongoeco_uri")


def test_injected_policy_keeps_totals_pages_and_links_exact(engine_uri):
    recorder = Recorder()
    with InProcessServer(engine_uri, policies=(HideTagged(),), hooks=(recorder,)) as server, _backend(server) as c:
        system = f"urn:test:{uuid.uuid4().hex}"
        visible, hidden = set(), set()
        pid = c.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
        for i in range(10):
            doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{pid}"},
                   "identifier": [{"system": system, "value": str(i)}],
                   "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}]}
            if i % 3 == 0:
                doc["meta"] = {"tag": [{"system": HIDDEN, "code": "hide"}]}
            r = c.post("/DocumentReference", json=doc, headers=FHIR)
            assert r.status_code == 201, r.text
            (hidden if i % 3 == 0 else visible).add(r.json()["id"])
        assert len(visible) == 6 and len(hidden) == 4
        seen, url, pages = [], f"/DocumentReference?identifier={system}|&_count=2&_total=accurate", 0
        while url:
            r = c.get(url)
            assert r.status_code == 200, r.text
            bundle = r.json()
            pages += 1
            assert bundle.get("total", 6) == 6  # counted through the policy's filter
            ids = [e["resource"]["id"] for e in bundle.get("entry", [])]
            assert len(ids) == 2  # full pages: the filter is in the query, not applied after it
            seen += ids
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            url = nxt[0].split("/fhir", 1)[1] if nxt else None
        assert pages == 3 and set(seen) == visible and len(seen) == 6
        some_hidden = next(iter(hidden))
        assert c.get(f"/DocumentReference/{some_hidden}").status_code == 404
        assert c.get(f"/DocumentReference/{some_hidden}/_history/1").status_code == 404
        # the hooks saw the pipeline: each request started and finished, reads disclosed, writes written
        kinds = [e for e in recorder.events if e[0] == "written"]
        assert len(kinds) == 11 and all(e[1] == "create" and e[2] is None and e[3] == 1 for e in kinds)
        disclosed = {ref for e in recorder.events if e[0] == "disclosed" for ref in e[2]}
        assert disclosed == {f"DocumentReference/{i}" for i in visible}
        finished = [e for e in recorder.events if e[0] == "finished"]
        started = [e for e in recorder.events if e[0] == "started"]
        assert len(started) == len(finished) and ("finished", "read", 404) in finished


class FindCounter(monitoring.CommandListener):
    def __init__(self, database):
        self.database = database
        self.reads: list[dict] = []

    def started(self, event):
        if event.database_name == self.database and event.command_name == "find":
            self.reads.append({"collection": event.command["find"], "filter": event.command.get("filter")})

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_patch_under_a_patient_token_reads_the_document_at_most_twice(ferretdb_uri):
    server = InProcessServer(ferretdb_uri)
    counter = FindCounter(server.database)
    monitoring.register(counter)  # applies to clients created from now on: the app's
    with server, _backend(server) as admin:
        patient = admin.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
        assert admin.post("/Consent", json=record_consent(patient), headers=FHIR).status_code == 201
        doc = admin.post("/DocumentReference", json=document(patient, author=f"Patient/{patient}",
                                                               patient_authored=True), headers=FHIR).json()["id"]
        add_client(server, "app", "public", "openid fhirUser launch/patient patient/*.cruds")
        add_user(server, "pat", "patient", f"Patient/{patient}")
        tok = user_token(server, "app", "pat", "launch/patient patient/*.cruds")["access_token"]
        with fhir_client(server, tok) as c:
            counter.reads.clear()
            r = c.patch(f"/DocumentReference/{doc}", content=json.dumps(
                [{"op": "replace", "path": "/status", "value": "superseded"}]),
                headers={"Content-Type": "application/json-patch+json"})
            assert r.status_code == 200, r.text
    reads = [q for q in counter.reads if q["collection"] in ("DocumentReference", "DocumentReference_history")
             # FerretDB only: after applying a version, the write protocol looks for a newer one
             # (docs/mongodb-compat.md, "that guarded replace is atomic"); not a read of the document
             and "$gt" not in str((q["filter"] or {}).get("_v"))]
    assert 1 <= len(reads) <= 2, reads


def test_transaction_reads_see_its_own_earlier_writes(any_fhir):
    pid = "txn-" + uuid.uuid4().hex[:12]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": f"Patient/{pid}"},
         "resource": {"resourceType": "Patient", "id": pid, "gender": "female"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}/_history/1"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}/_history"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}/$validate"}},
    ]}
    r = any_fhir.post("/", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201", "200", "200", "200"]
    assert entries[1]["resource"]["id"] == pid and entries[1]["resource"]["gender"] == "female"
    assert entries[2]["resource"]["type"] == "history" and entries[2]["resource"]["total"] == 1
    assert entries[3]["resource"]["resourceType"] == "OperationOutcome"
    assert entries[3]["resource"]["issue"][0]["severity"] == "information"
