"""Audit completeness as a property (issue 10): for random sequences of requests by random actors,
every request has exactly the AuditEvents IHE BALP prescribes, stored *before* its response
arrived: one per patient whose data the response discloses (BALP PatientRead / PatientQuery carry
one patient each; a response about no patient gets one event), each disclosed resource named as a
versioned reference, outcome 0 on success and 4 on a refusal or a client error.

Expectations are derived from the responses (what was disclosed) and BALP, not from the code that
writes the events. Events are looked up straight in the database, right after each response."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from tests.consent_world import FHIR
from tests.dmp import document

ACTORS = ["alice", "bob", "auth", "none", "blocked", "readonly", "operator", "org-o"]


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


@pytest.fixture(scope="module")
def db(w):
    with MongoClient(w.server.mongodb_uri) as client:
        yield client[w.server.database]


def _requests(w) -> dict:
    """name -> (method, path, params, body, the records it asks for by id or parameter): reads,
    searches over one or several records, history, a write, what does not exist, a client error."""
    a, b = w.a, w.b
    return {
        "read doc_a": ("GET", f"/DocumentReference/{w.doc_a}", None, None, {a}),
        "read doc_b": ("GET", f"/DocumentReference/{w.doc_b}", None, None, {b}),
        "read masked_a": ("GET", f"/DocumentReference/{w.masked_a}", None, None, {a}),
        "read hidden_a": ("GET", f"/DocumentReference/{w.hidden_a}", None, None, {a}),
        "read patient a": ("GET", f"/Patient/{a}", None, None, {a}),
        "read practitioner": ("GET", f"/{w.pr('auth')}", None, None, set()),
        "read missing": ("GET", f"/DocumentReference/{uuid.uuid4()}", None, None, set()),
        "search a": ("GET", "/DocumentReference", {"patient": a}, None, {a}),
        "search a and b": ("GET", "/DocumentReference", {"patient": f"{a},{b}", "_count": "100"}, None, {a, b}),
        "search all": ("GET", "/DocumentReference", {"_count": "20"}, None, set()),
        "search patients": ("GET", "/Patient", {"_id": f"{a},{b}"}, None, {a, b}),
        "history doc_a": ("GET", f"/DocumentReference/{w.doc_a}/_history", None, None, {a}),
        "bad search": ("GET", "/DocumentReference", {"no-such-parameter": "x"}, None, set()),
        "create for a": ("POST", "/DocumentReference", None, document(a, author=w.pr("auth")), {a}),
    }


def _patients(resource: dict) -> set[str]:
    """Whose data a resource is (the compartments of the resources this test touches)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return {resource["id"]}
    ref = {"DocumentReference": resource.get("subject"), "Consent": resource.get("patient"),
           "Binary": resource.get("securityContext")}.get(rtype) or {}
    ref = ref.get("reference", "")
    return {ref.split("/", 1)[1]} if ref.startswith("Patient/") else set()


def _disclosed(body: dict) -> list[dict]:
    if body.get("resourceType") == "Bundle":
        return [e["resource"] for e in body.get("entry", []) if "resource" in e]
    return [] if body.get("resourceType") == "OperationOutcome" else [body]


def _versioned(resource: dict) -> str:
    return f"{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"


def _events_of(db, request_id: str, since: datetime) -> list[dict]:
    found = [orjson.loads(d["_json"]) for d in db["AuditEvent"].find({"_lu": {"$gte": since}},
                                                                     projection={"_json": 1})]
    return [e for e in found if any(x.get("what", {}).get("identifier", {}).get("value") == request_id
                                    for x in e.get("entity", []))]


def _patient_of_event(event: dict) -> str | None:
    refs = [x["what"]["reference"] for x in event["entity"]
            if x.get("role", {}).get("code") == "1" and "reference" in x.get("what", {})]
    assert len(refs) <= 1, event  # BALP: one patient per event
    return refs[0].split("/", 1)[1] if refs else None


def _refs(event: dict) -> set[str]:
    return {x["what"]["reference"] for x in event["entity"] if "reference" in x.get("what", {})}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(ACTORS), st.integers(0, 13)), min_size=1, max_size=4))
def test_every_request_has_exactly_the_audit_events_balp_prescribes(w, db, steps):
    requests = _requests(w)
    names = sorted(requests)
    own = {"alice": w.a, "bob": w.b}
    for actor, which in steps:
        method, path, params, body, asked = requests[names[which]]
        asked = asked or {own.get(actor)}  # nothing asked by id: the caller's own record, if a patient
        rid = uuid.uuid4().hex
        since = datetime.now(UTC) - timedelta(seconds=5)
        with w.client(actor) as c:
            r = c.request(method, path, params=params, headers={**FHIR, "X-Request-Id": rid},
                          content=orjson.dumps(body) if body is not None else None)
        events = _events_of(db, rid, since)  # already stored: the response came after them
        label = f"{actor} {names[which]} -> {r.status_code}"
        assert r.status_code < 500, label
        patients = [_patient_of_event(e) for e in events]
        assert len(patients) == len(set(patients)), label  # one event per patient
        if r.status_code >= 400:  # refused or wrong: filed under the records asked for, nothing disclosed
            assert set(patients) == asked, (label, patients, asked)
            assert all(e["outcome"] == "4" and e["outcomeDesc"] for e in events), label
            assert all(not any("/_history/" in ref for ref in _refs(e)) for e in events), label
            continue
        assert all(e["outcome"] == "0" for e in events), label
        if method == "POST":  # a create discloses nothing but writes one version
            location = r.headers["Location"].split("/fhir/", 1)[1]
            assert patients == [w.a] and events[0]["action"] == "C", label
            assert location in _refs(events[0]), label
            continue
        by_patient: dict[str | None, set[str]] = {}
        for res in _disclosed(r.json()):
            for pid in _patients(res) or {None}:
                by_patient.setdefault(pid, set()).add(_versioned(res))
        expected = ({p for p in by_patient if p is not None} or {None}) if by_patient else asked
        assert set(patients) == expected, (label, patients, expected)
        seen = {_patient_of_event(e): _refs(e) for e in events}
        for pid, versions in by_patient.items():  # every version disclosed named in its patient's event
            targets = [seen[pid]] if pid is not None else list(seen.values())
            assert all(versions <= refs for refs in targets), (label, pid, versions)
