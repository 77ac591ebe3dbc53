"""The audit trail (issue 10): BALP AuditEvents for every interaction, stored before the response
(fail closed), group-committed, hash-chained and verified by `AuditEvent/$verify`; AuditEvent and
Provenance immutable. Expectations from IHE BALP (profiles.ihe.net/ITI/BALP) and R4 AuditEvent."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import orjson
import pytest
from pymongo import MongoClient

from fhir_server import composition
from fhir_server.fhir.validation import validate_resource
from tests.consent_world import FHIR
from tests.dmp import document
from tests.inprocess import InProcessServer

REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


def _events(server, request_id: str) -> list[dict]:
    """The AuditEvents of one request, straight from the database."""
    with MongoClient(server.mongodb_uri) as client:
        docs = client[server.database]["AuditEvent"].find({}, projection={"_json": 1})
        found = [orjson.loads(d["_json"]) for d in docs]
    return [e for e in found if any(x.get("what", {}).get("identifier", {}).get("value") == request_id
                                    for x in e.get("entity", []))]


def _refs(event: dict) -> set[str]:
    return {x["what"]["reference"] for x in event["entity"] if "reference" in x.get("what", {})}


def _rid() -> dict:
    return {"X-Request-Id": uuid.uuid4().hex}


def test_a_read_is_audited_per_balp_with_the_versioned_resource_and_the_patient(w):
    h = _rid()
    with w.client("auth") as c:
        r = c.get(f"/DocumentReference/{w.doc_a}", headers=h)
    assert r.status_code == 200
    [event] = _events(w.server, h["X-Request-Id"])
    validate_resource(event, expected_type="AuditEvent")
    assert event["type"] == {"system": REST, "code": "rest", "display": "Restful Operation"}
    assert event["subtype"][0]["code"] == "read" and event["action"] == "R" and event["outcome"] == "0"
    version = r.json()["meta"]["versionId"]
    assert _refs(event) == {f"Patient/{w.a}", f"DocumentReference/{w.doc_a}/_history/{version}"}
    user = [a for a in event["agent"] if a.get("requestor")]
    assert len(user) == 1 and user[0]["who"]["reference"] == w.pr("auth")
    assert any(a["type"]["coding"][0]["code"] == "110153" for a in event["agent"])  # the client app
    assert any(a["type"]["coding"][0]["code"] == "110152" for a in event["agent"])  # this server
    assert w.tokens["auth"] not in orjson.dumps(event).decode()  # never a token


def test_a_search_over_two_records_gives_one_event_per_patient_with_the_query(w):
    h = _rid()
    with w.client("operator") as c:
        r = c.get("/DocumentReference", params={"patient": f"{w.a},{w.b}", "_count": "200"}, headers=h)
    assert r.status_code == 200
    found = {e["resource"]["id"]: e["resource"] for e in r.json()["entry"]}
    events = _events(w.server, h["X-Request-Id"])
    assert len(events) == 2
    by_patient = {next(x for x in e["entity"] if x.get("role", {}).get("code") == "1")["what"]["reference"]: e
                  for e in events}
    assert set(by_patient) == {f"Patient/{w.a}", f"Patient/{w.b}"}
    for pid in (w.a, w.b):
        event = by_patient[f"Patient/{pid}"]
        validate_resource(event, expected_type="AuditEvent")
        assert event["subtype"][0]["code"] == "search-type" and event["action"] == "E"
        mine = {f"DocumentReference/{i}/_history/{d['meta']['versionId']}" for i, d in found.items()
                if d["subject"]["reference"] == f"Patient/{pid}"}
        assert mine and _refs(event) - {f"Patient/{pid}"} == mine
        [query] = [x for x in event["entity"] if x.get("role", {}).get("code") == "24"]
        assert base64.b64decode(query["query"]).decode().startswith(f"patient={w.a},{w.b}")


def test_a_refusal_and_a_failure_are_audited_with_their_outcome(w):
    h = _rid()
    with w.client("none") as c:  # not authorized by Alice: 404, nothing disclosed
        assert c.get(f"/DocumentReference/{w.doc_a}", headers=h).status_code == 404
    [event] = _events(w.server, h["X-Request-Id"])
    validate_resource(event, expected_type="AuditEvent")
    assert event["outcome"] == "4" and "is not known" in event["outcomeDesc"]
    # the id asked for, no version disclosed; in Alice's record (her access history shows the attempt),
    # labelled so that Dr None does not learn from his own AuditEvents whose document it was
    assert _refs(event) == {f"Patient/{w.a}", f"DocumentReference/{w.doc_a}"}
    assert event["meta"]["security"] == [{"system": "urn:fhir-dmp:security", "code": "hidden-from-agent"}]
    h = _rid()
    with w.client("readonly") as c:  # authorized on Alice's record, but her masked document is not his
        assert c.get(f"/DocumentReference/{w.doc_a}").status_code == 200
        assert c.get(f"/DocumentReference/{w.masked_a}", headers=h).status_code == 404
        [refused] = _events(w.server, h["X-Request-Id"])
        assert _refs(refused) == {f"Patient/{w.a}", f"DocumentReference/{w.masked_a}"}
        mine = c.get("/AuditEvent", params={"agent": w.pr("readonly"), "_count": "1000"}).json().get("entry", [])
        assert mine and refused["id"] not in {e["resource"]["id"] for e in mine}  # it would confirm the document
        assert w.masked_a not in str(mine)
    h = _rid()
    with w.client("auth") as c:  # a create that fails validation
        assert c.post("/DocumentReference", json={"resourceType": "DocumentReference"}, headers={**FHIR, **h}
                      ).status_code in (400, 422)
    [event] = _events(w.server, h["X-Request-Id"])
    assert event["action"] == "C" and event["outcome"] == "4" and event["outcomeDesc"]


def test_every_bundle_entry_is_audited(w):
    h = _rid()
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"DocumentReference/{w.doc_a}"}},
        {"request": {"method": "POST", "url": "DocumentReference"}, "resource": document(w.a, author=w.pr("auth"))},
        {"request": {"method": "GET", "url": f"DocumentReference/{w.doc_b}"}}]}
    with w.client("auth") as c:
        r = c.post("/", json=bundle, headers={**FHIR, **h})
    assert r.status_code == 200
    events = _events(w.server, h["X-Request-Id"])
    kinds = sorted(e["subtype"][0]["code"] for e in events)
    assert kinds == ["batch", "create", "read", "read"]
    created = r.json()["entry"][1]["response"]["location"].split("DocumentReference/")[1].split("/")
    [create] = [e for e in events if e["action"] == "C"]
    assert f"DocumentReference/{created[0]}/_history/1" in _refs(create) and create["outcome"] == "0"


def test_bundle_entries_refused_alike_are_one_event_naming_each_resource(w):
    """BALP records an attempt per patient; N identical refusals in one batch are one attempt: one
    event per (interaction, refusal, patient) names every resource asked for and says how many
    entries it stands for. Entries refused differently, or allowed, keep events of their own."""
    h = _rid()
    refused_reads = [w.doc_a, w.masked_a, w.doc_a, w.doc_b]
    entries = [{"request": {"method": "GET", "url": f"DocumentReference/{d}"}} for d in refused_reads]
    entries += [{"request": {"method": "POST", "url": "DocumentReference"},
                 "resource": document(w.a, author=w.pr("none"))}] * 3
    with w.client("none") as c:  # Dr None: no authorization from anyone
        r = c.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers={**FHIR, **h})
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert all(s.startswith("403") or s.startswith("404") for s in statuses), statuses
    events = _events(w.server, h["X-Request-Id"])
    for event in events:
        validate_resource(event, expected_type="AuditEvent")
    [batch] = [e for e in events if e["subtype"][0]["code"] == "batch"]
    assert batch["outcome"] == "0"
    entry_events = [e for e in events if e is not batch]
    assert all(e["outcome"] == "4" for e in entry_events)

    def count(event: dict) -> int:
        head, sep, _ = event["outcomeDesc"].partition(" Bundle entries refused alike: ")
        return int(head) if sep else 1

    assert sum(count(e) for e in entry_events) == len(entries)  # every entry is accounted for, once
    reads = [e for e in entry_events if e["action"] == "R"]
    named = {(ref, e["id"]) for e in reads for ref in _refs(e) if ref.startswith("DocumentReference/")}
    assert {ref for ref, _ in named} == {f"DocumentReference/{d}" for d in refused_reads}
    assert len(named) == len(set(refused_reads))  # each refused document named in exactly one event
    for e in reads:  # and with its own patient only
        patients = {ref for ref in _refs(e) if ref.startswith("Patient/")}
        docs = {ref.split("/")[1] for ref in _refs(e) if ref.startswith("DocumentReference/")}
        owner = {w.doc_a: w.a, w.masked_a: w.a, w.doc_b: w.b}
        assert patients == {f"Patient/{owner[d]}" for d in docs}
    assert sum(count(e) for e in reads) == len(refused_reads)
    assert len(reads) < len(refused_reads)  # the same refusal asked twice is one attempt
    [twice] = [e for e in reads if f"DocumentReference/{w.doc_a}" in _refs(e)]
    assert count(twice) >= 2
    [creates] = [e for e in entry_events if e["action"] == "C"]
    assert count(creates) == 3 and _refs(creates) == {f"Patient/{w.a}"}
    # no id to name before it exists: the type it would have been
    assert [x["what"] for x in creates["entity"] if "type" in x.get("what", {})] == [{"type": "DocumentReference"}]


@pytest.mark.parametrize("rtype", ["AuditEvent", "Provenance"])
def test_audit_and_provenance_are_immutable_for_everyone(w, rtype):
    with w.client("operator") as c:
        some = c.get(f"/{rtype}", params={"_count": "1"}).json().get("entry")
        rid = some[0]["resource"]["id"] if some else "any"
        assert c.put(f"/{rtype}/{rid}", json={"resourceType": rtype, "id": rid}, headers=FHIR).status_code == 405
        assert c.delete(f"/{rtype}/{rid}").status_code == 405
        assert c.patch(f"/{rtype}/{rid}", content=b"[]", headers={"Content-Type": "application/json-patch+json"}
                       ).status_code == 405


def test_the_chains_of_two_workers_verify_and_vread_serves_an_event(w):
    with w.client("operator") as c:
        r = c.get("/AuditEvent/$verify")
        assert r.status_code == 200, r.text
        assert r.json()["issue"][0]["severity"] == "information", r.text
        event = c.get("/AuditEvent", params={"_sort": "-date", "_count": "1"}).json()["entry"][0]["resource"]
        assert c.get(f"/AuditEvent/{event['id']}/_history/1").json()["id"] == event["id"]
    with w.client("auth") as c:
        assert c.get("/AuditEvent/$verify").status_code == 403


def _verify(srv) -> list[str]:
    with srv.client() as c:
        r = c.get("/AuditEvent/$verify")
    assert r.status_code == 200, r.text
    return [i["diagnostics"] for i in r.json()["issue"] if i["severity"] == "error"]


def _chain(uri: str, db: str) -> tuple[list[dict], object]:
    client: MongoClient = MongoClient(uri)
    coll = client[db]["AuditEvent"]
    chains = coll.distinct("_ac")
    longest = max(chains, key=lambda ch: coll.count_documents({"_ac": ch}))
    return list(coll.find({"_ac": longest}, sort=[("_as", 1)])), client


@pytest.mark.parametrize("tamper", ["alter", "remove", "swap"])
def test_tampering_with_the_database_is_detected_and_named(ferretdb_uri, tamper):
    with InProcessServer(ferretdb_uri, insecure=True) as srv:
        with srv.client() as c:
            pid = c.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
            for _ in range(6):
                assert c.get(f"/Patient/{pid}").status_code == 200
        assert _verify(srv) == []
        records, client = _chain(ferretdb_uri, srv.database)
        coll = client[srv.database]["AuditEvent"]
        victim = records[3]
        if tamper == "alter":  # the outcome of one access rewritten
            body = orjson.loads(victim["_json"])
            body["outcome"] = "4"
            coll.update_one({"_id": victim["_id"]}, {"$set": {"_json": orjson.dumps(body)}})
        elif tamper == "remove":
            coll.delete_one({"_id": victim["_id"]})
        else:  # records 3 and 4 change places
            coll.update_one({"_id": victim["_id"]}, {"$set": {"_as": 4}})
            coll.update_one({"_id": records[4]["_id"]}, {"$set": {"_as": 3}})
        client.close()
        problems = _verify(srv)
        assert len(problems) == 1
        expected = {"alter": f"record 3 (AuditEvent/{victim['_id']}) altered",
                    "remove": f"record 4 (AuditEvent/{records[4]['_id']}) removed: record 3 is missing",
                    "swap": f"record 3 (AuditEvent/{records[4]['_id']}) reordered"}[tamper]
        assert expected in problems[0], problems


@pytest.mark.parametrize("cut", ["end", "whole"])
def test_records_cut_off_at_the_end_of_a_chain_are_detected(ferretdb_uri, cut):
    """What links alone cannot see: the last records of a chain deleted (what remains still links
    up), or a whole chain. The chain's head, stored apart and flushed at shutdown, tells."""
    with InProcessServer(ferretdb_uri, insecure=True) as first:
        with first.client() as c:
            pid = c.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
            for _ in range(5):
                assert c.get(f"/Patient/{pid}").status_code == 200
    records, client = _chain(ferretdb_uri, first.database)  # the first server's chain, now closed
    with client:
        assert len(records) >= 6
        doomed = records[-2:] if cut == "end" else records
        client[first.database]["AuditEvent"].delete_many({"_id": {"$in": [r["_id"] for r in doomed]}})
    with InProcessServer(ferretdb_uri, insecure=True, database=first.database) as second:
        problems = _verify(second)
    chain, last = records[0]["_ac"], len(records) - 1
    expected = (f"chain {chain}: record {last - 1} removed: records {last - 1} to {last} are missing at the end"
                if cut == "end" else f"chain {chain}: record 0 removed: records 0 to {last} are missing")
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_when_the_audit_store_cannot_be_written_nothing_is_disclosed(ferretdb_uri):
    with InProcessServer(ferretdb_uri, insecure=True) as srv:
        with srv.client() as c:
            pid = c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Secret"}]},
                         headers=FHIR).json()["id"]
            trail = srv.app.state.services.trail  # type: ignore[attr-defined]
            dead = composition.connect(srv.app.state.services.settings,  # type: ignore[attr-defined]
                                       "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
            live, trail.repo = trail.repo, composition.repository(dead, dead["x"])
            try:
                r = c.get(f"/Patient/{pid}")
                assert r.status_code == 503 and "Secret" not in r.text
                assert r.json()["resourceType"] == "OperationOutcome"
            finally:
                trail.repo = live
            assert c.get(f"/Patient/{pid}").status_code == 200


def test_who_reads_the_audit_patient_own_record_professional_own_acts_operator_all(w):
    h = _rid()
    with w.client("readonly") as c:  # Dr ReadOnly reads one of Alice's documents
        assert c.get(f"/DocumentReference/{w.doc_a}", headers=h).status_code == 200
    with w.client("auth") as c:
        assert c.get(f"/DocumentReference/{w.doc_a}").status_code == 200
        seen = c.get("/AuditEvent", params={"patient": w.a, "_count": "1000"}).json().get("entry", [])
        assert seen and all(any(a["who"].get("reference") == w.pr("auth") for a in e["resource"]["agent"])
                            for e in seen)  # only what Dr Auth did
    with w.client("alice") as c:  # Alice sees Dr ReadOnly's access, newest first
        r = c.get("/AuditEvent", params={"patient": w.a, "_sort": "-date", "_count": "1000"}, headers=_rid())
        assert r.status_code == 200
        events = [e["resource"] for e in r.json()["entry"]]
        dates = [e["recorded"] for e in events]
        assert dates == sorted(dates, reverse=True)
        mine = [e for e in events if any(x.get("what", {}).get("identifier", {}).get("value") == h["X-Request-Id"]
                                         for x in e["entity"])]
        assert len(mine) == 1 and mine[0]["agent"][0]["who"]["reference"] == w.pr("readonly")
    with w.client("operator") as c:  # an operator service reads every event of the record
        everything = c.get("/AuditEvent", params={"patient": w.a, "_count": "1000"}).json()["entry"]
        assert len(everything) > len(seen)


def test_concurrent_requests_share_their_audit_writes(ferretdb_uri):
    """Group commit: 48 concurrent reads, every one audited, in fewer insert_many calls than reads."""
    from concurrent.futures import ThreadPoolExecutor

    with InProcessServer(ferretdb_uri, insecure=True) as srv:
        with srv.client() as c:
            pid = c.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
        trail = srv.app.state.services.trail  # type: ignore[attr-defined]
        before = trail.batches
        ids = [uuid.uuid4().hex for _ in range(48)]

        def read(rid: str) -> int:
            with srv.client() as c:
                return c.get(f"/Patient/{pid}", headers={"X-Request-Id": rid}).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(read, ids)) == {200}
        batches = trail.batches - before
        with MongoClient(ferretdb_uri) as client:
            stored = [orjson.loads(d["_json"]) for d in client[srv.database]["AuditEvent"].find({})]
        audited = {x["what"]["identifier"]["value"] for e in stored for x in e["entity"]
                   if x.get("type", {}).get("code") == "XrequestId"}
        assert set(ids) <= audited
        assert 1 <= batches < len(ids), batches


def _with_request(entries: list[dict], rid: str) -> list[dict]:
    return [e["resource"] for e in entries
            if any(x.get("what", {}).get("identifier", {}).get("value") == rid for x in e["resource"]["entity"])]


def test_a_refused_attempt_is_shown_to_the_patient_not_to_the_one_who_tried(w):
    """Filed under Alice's record, a refused attempt would tell the one who tried whose record the
    document is: Alice and the auditors read it, Dr Auth (refused a document Alice masked) and
    Bob do not."""
    by_doctor, by_bob, allowed = _rid(), _rid(), _rid()
    with w.client("auth") as c:
        assert c.get(f"/DocumentReference/{w.masked_a}", headers=by_doctor).status_code == 404
        assert c.get(f"/DocumentReference/{w.doc_a}", headers=allowed).status_code == 200
        r = c.get("/AuditEvent", params={"agent": w.pr("auth"), "_count": "1000"})
        assert r.status_code == 200 and _with_request(r.json()["entry"], allowed["X-Request-Id"])  # what they did
        assert not _with_request(r.json()["entry"], by_doctor["X-Request-Id"])
        assert not [e for e in r.json()["entry"] if "hidden-from-agent" in json.dumps(e["resource"].get("meta", {}))]
    with w.client("bob") as c:
        assert c.get(f"/DocumentReference/{w.doc_a}", headers=by_bob).status_code == 404
        r = c.get("/AuditEvent", params={"_count": "1000"})
        assert r.status_code == 200 and not _with_request(r.json().get("entry", []), by_bob["X-Request-Id"])
    with w.client("alice") as c:
        entries = c.get("/AuditEvent", params={"patient": w.a, "_count": "1000", "_sort": "-date"}).json()["entry"]
    for rid, who in ((by_doctor, w.pr("auth")), (by_bob, f"Patient/{w.b}")):
        [event] = _with_request(entries, rid["X-Request-Id"])
        assert event["outcome"] == "4" and event["agent"][0]["who"]["reference"] == who


def test_the_engine_stopped_mid_run_nothing_is_disclosed_unaudited(tmp_path):
    """Readers keep reading while the database engine is killed and started again: every answer
    is a 200 whose AuditEvent is stored, or a 503 OperationOutcome that discloses nothing."""
    import threading

    from fhir_server.engine.embedded import EmbeddedEngine
    from tests.conftest import FERRETDB_BIN

    engine = EmbeddedEngine(FERRETDB_BIN, tmp_path, backend="sqlite")
    uri = engine.start() + "?serverSelectionTimeoutMS=1500&connectTimeoutMS=1500"
    answers: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    before_kill, after_kill = threading.Semaphore(0), threading.Event()
    try:
        with InProcessServer(uri, insecure=True) as srv:
            with srv.client() as c:
                pid = c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Secret"}]},
                             headers=FHIR).json()["id"]

            def reader() -> None:
                with srv.client(timeout=30) as c:
                    for n in range(60):
                        rid = uuid.uuid4().hex
                        r = c.get(f"/Patient/{pid}", headers={"X-Request-Id": rid})
                        with lock:
                            answers.append((rid, r.status_code, r.text))
                        if n == 5:
                            before_kill.release()
                        if after_kill.is_set() and r.status_code == 200:
                            return  # served again after the restart

            threads = [threading.Thread(target=reader) for _ in range(4)]
            for t in threads:
                t.start()
            for _ in threads:
                assert before_kill.acquire(timeout=60)
            assert engine.ferret is not None and engine.ferret.process is not None
            engine.ferret.process.kill()  # mid-run: requests in flight
            engine.ferret.process.wait()
            with srv.client() as c:
                down = c.get(f"/Patient/{pid}")
            engine.ferret.start()
            after_kill.set()
            for t in threads:
                t.join(120)
            assert down.status_code == 503 and "Secret" not in down.text
            assert down.json()["resourceType"] == "OperationOutcome"
        statuses = {s for _, s, _ in answers}
        assert statuses <= {200, 503}, statuses
        assert 200 in statuses
        refused = [text for _, s, text in answers if s == 503]
        assert all("Secret" not in text for text in refused)
        with MongoClient(uri) as client:
            stored = {x["what"]["identifier"]["value"]
                      for d in client[srv.database]["AuditEvent"].find({}, projection={"_json": 1})
                      for x in orjson.loads(d["_json"])["entity"] if x.get("type", {}).get("code") == "XrequestId"}
        disclosed = {rid for rid, s, _ in answers if s == 200}
        assert disclosed <= stored, len(disclosed - stored)
    finally:
        engine.stop()


def test_audit_events_validate_against_r4_with_the_hapi_validator(w):
    """Every kind of event the trail writes (read, search over two records, refusal, invalid
    create, Bundle entries) is valid R4 for the HAPI FHIR validator (offline, Maven Central)."""
    from tests.test_profiles import run_hapi

    asked: list[str] = []

    def rid() -> dict:
        h = _rid()
        asked.append(h["X-Request-Id"])
        return h
    with w.client("auth") as c:
        assert c.get(f"/DocumentReference/{w.doc_a}", headers=rid()).status_code == 200
        assert c.get(f"/DocumentReference/{w.masked_a}", headers=rid()).status_code == 404
        assert c.post("/DocumentReference", json={"resourceType": "DocumentReference"},
                      headers={**FHIR, **rid()}).status_code in (400, 422)
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"DocumentReference/{w.doc_a}"}},
            {"request": {"method": "POST", "url": "DocumentReference"}, "resource": document(w.a, author=w.pr("auth"))}]}
        assert c.post("/", json=bundle, headers={**FHIR, **rid()}).status_code == 200
    with w.client("operator") as c:
        assert c.get("/DocumentReference", params={"patient": f"{w.a},{w.b}"}, headers=rid()).status_code == 200
    events = [e for r in asked for e in _events(w.server, r)]
    assert len(events) >= 8
    verdicts = run_hapi([{"id": str(i), "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
                          "resource": e} for i, e in enumerate(events)])
    errors = {i: [f"{m['location']}: {m['message']}" for m in v["issues"] if m["severity"] in ("error", "fatal")]
              for i, v in verdicts.items()}
    assert all(v["valid"] for v in verdicts.values()) and not any(errors.values()), errors


def test_a_long_query_is_audited_by_its_start_its_length_and_its_digest(w):
    """A request line may carry ~80 KB of query and a _search form 64 KiB: kept whole, a client
    could have the trail store that much per request, forever. The event keeps its first 8 KiB,
    and its length and SHA-256 (which match the query from another log)."""
    h = _rid()
    value = "urn:x|" + "é" * 10_000  # 20,006 bytes in UTF-8: the cut may fall inside a character
    with w.client("operator") as c:
        r = c.get("/DocumentReference", params={"identifier": value}, headers=h)
    assert r.status_code == 200, r.text
    [event] = _events(w.server, h["X-Request-Id"])
    validate_resource(event, expected_type="AuditEvent")
    [query] = [x for x in event["entity"] if x.get("role", {}).get("code") == "24"]
    full = f"identifier={value}".encode()
    assert base64.b64decode(query["query"]) == full[:8192]
    assert f"query of {len(full)} bytes" in query["description"]
    assert hashlib.sha256(full).hexdigest() in query["description"]
    # a query of ordinary length is kept whole, with no such note
    h = _rid()
    with w.client("operator") as c:
        assert c.get("/DocumentReference", params={"identifier": "urn:x|1"}, headers=h).status_code == 200
    [event] = _events(w.server, h["X-Request-Id"])
    [query] = [x for x in event["entity"] if x.get("role", {}).get("code") == "24"]
    assert base64.b64decode(query["query"]) == b"identifier=urn:x|1" and "SHA-256" not in query["description"]
