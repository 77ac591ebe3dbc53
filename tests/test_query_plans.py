"""Every hot query shape is served by an index on the default engine, read from the engine's own
plan (FerretDB on PostgreSQL: `explain` returns PostgreSQL's plan). The filters are the ones the
server sends: the search compiler's output, with a patient-context access filter where a patient
token would add one, through the repository's own shaping (`flatten`)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest
from pymongo import MongoClient

from fhir_server.access.filters import restrict, rules_filter
from fhir_server.auth.scopes import Rule
from fhir_server.search import mongo
from fhir_server.search.parse import parse
from fhir_server.storage.repository import flatten
from tests.conftest import start_server, stop_server

FHIR = {"Content-Type": "application/fhir+json"}
pytestmark = pytest.mark.skipif(os.environ.get("FHIR_TEST_BACKEND", "postgresql") != "postgresql",
                                reason="plans are read from the default engine (FerretDB on PostgreSQL)")
N = 400
LOINC = "http://loinc.org"


def _name(i: int, length: int) -> str:
    """A deterministic, well spread made-up name (so prefixes are selective, as real names are)."""
    letters = "".join(chr(97 + (h % 26)) for h in hashlib.sha256(str(i).encode()).digest()[:length])
    return letters.capitalize()


def _bulk(i: int) -> str:
    """~4 kB that do not compress much: the stored document is TOASTed, as most real resources are,
    which makes a sequential scan look cheaper to PostgreSQL than it is (engine/postgres.py)."""
    return "".join(hashlib.sha256(f"{i}/{k}".encode()).hexdigest() for k in range(64))


@pytest.fixture(scope="module")
def loaded(ferretdb_uri):
    server = start_server(ferretdb_uri, {"FHIR_MAX_BODY_BYTES": str(64 << 20)})
    system = f"urn:test:{uuid.uuid4().hex[:8]}"
    try:
        with server.client() as c:
            def batch(entries):
                r = c.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=FHIR)
                assert r.status_code == 200 and all(e["response"]["status"] == "201" for e in r.json()["entry"])
                return [e["resource"]["id"] for e in r.json()["entry"]]

            pids = []
            for start in range(0, N, 100):
                pids += batch([{"request": {"method": "POST", "url": "Patient"}, "resource": {
                    "resourceType": "Patient", "identifier": [{"system": system, "value": str(i)}],
                    "name": [{"family": _name(i, 12 if i % 2 else 6), "given": [_name(-i, 7)]}],
                    "address": [{"text": _bulk(i)}]}}
                    for i in range(start, start + 100)])
            for start in range(0, N, 100):
                batch([{"request": {"method": "POST", "url": "DocumentReference"}, "resource": {
                    "resourceType": "DocumentReference", "status": "current", "date": "2026-01-01T00:00:00Z",
                    "subject": {"reference": f"Patient/{pids[i]}"}, "type": {"coding": [{"system": LOINC,
                                                                                        "code": "11488-4"}]},
                    "author": [{"reference": f"Patient/{pids[(i + 1) % N]}"}],
                    "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}]}}
                    for i in range(start, start + 100)])
                batch([{"request": {"method": "POST", "url": "AuditEvent"}, "resource": {
                    "resourceType": "AuditEvent", "recorded": "2026-01-01T00:00:00Z",
                    "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
                    "agent": [{"who": {"reference": f"Patient/{pids[i]}"}, "requestor": True}],
                    "source": {"observer": {"display": "fhir-server"}},
                    "entity": [{"what": {"reference": f"Patient/{pids[i]}"}}]}} for i in range(start, start + 100)])
        client = MongoClient(ferretdb_uri)
        db = client[server.database]
        db.command("ping")
        yield db, system, pids
        client.close()
    finally:
        stop_server(server)


def _plan(db, rtype: str, flt: dict, sort: dict | None = None) -> str:
    find = {"find": rtype, "filter": flatten(flt), **({"sort": sort} if sort else {})}
    return json.dumps(db.command("explain", find)["queryPlanner"])


def _uses_index(plan: str) -> bool:
    return any(node in plan for node in ('"Index Scan"', '"Bitmap Index Scan"', '"Index Only Scan"'))


def _search(rtype: str, pairs: list[tuple[str, str]], patient: str | None = None) -> dict:
    flt = mongo.compile(parse(rtype, pairs))
    return restrict(flt, rules_filter(rtype, (Rule(patient),))) if patient else flt


def test_hot_query_shapes_are_index_served(loaded):
    db, system, pids = loaded
    p = pids[7]
    shapes = {
        "patient by identifier": ("Patient", _search("Patient", [("identifier", f"{system}|7")])),
        "read by id": ("Patient", {"_id": p}),
        "a patient's documents by type, newest first": (
            "DocumentReference", _search("DocumentReference", [("patient", f"Patient/{p}"),
                                                               ("type", f"{LOINC}|11488-4")])),
        "the same under the patient's own token": (
            "DocumentReference", _search("DocumentReference", [("patient", f"Patient/{p}"),
                                                               ("type", f"{LOINC}|11488-4")], patient=p)),
        "audit of a patient since a date": (
            "AuditEvent", _search("AuditEvent", [("patient", f"Patient/{p}"), ("date", "ge2025-01-01")])),
        # a chain resolves the inner search first, then filters on the one reference it found
        "chained identifier, inner step": ("Patient", _search("Patient", [("identifier", f"{system}|7")])),
        "chained identifier, outer step": ("DocumentReference", {"r_subject": f"Patient/{p}"}),
        # _has resolves the documents of the type, then the patients they point at
        "_has, inner step": ("DocumentReference", _search("DocumentReference", [("type", f"{LOINC}|11488-4"),
                                                                               ("subject", f"Patient/{p}")])),
        "_include targets": ("Patient", {"_id": {"$in": [pids[3], pids[4], pids[5]]}}),
        "_revinclude: the documents pointing at a page of patients": (
            "DocumentReference", {"r_subject": {"$in": [f"Patient/{pids[1]}", f"Patient/{pids[2]}"]}}),
        "_revinclude=DocumentReference:author": (
            "DocumentReference", {"r_author": {"$in": [f"Patient/{pids[1]}", f"Patient/{pids[2]}"]}}),
        "_revinclude=AuditEvent:entity": ("AuditEvent", {"r_entity": {"$in": [f"Patient/{pids[1]}"]}}),
        "_revinclude under the patient's token": (
            "DocumentReference", restrict({"r_subject": {"$in": [f"Patient/{p}"]}},
                                          rules_filter("DocumentReference", (Rule(p),)))),
        # a patient token's compartment: DocumentReference subject OR author, Patient _id OR link
        "the patient's documents, no criteria, under the patient's token": (
            "DocumentReference", _search("DocumentReference", [], patient=p)),
        "the patient's own record under the patient's token": ("Patient", _search("Patient", [], patient=p)),
        "a patient's documents of a year (date range on d_date.lo/hi)": (
            "DocumentReference", _search("DocumentReference", [("patient", f"Patient/{p}"),
                                                               ("type", f"{LOINC}|11488-4"),
                                                               ("date", "ge2026-01-01"), ("date", "lt2027")])),
        # string search is starts-with: prefix tokens make it an equality (search/prefix.py)
        "family, short prefix": ("Patient", _search("Patient", [("family", _name(7, 6)[:3])])),
        "family, whole name longer than the prefix tokens": ("Patient", _search("Patient", [("family", _name(9, 12))])),
        "family or another family": ("Patient", _search("Patient", [("family", f"{_name(7, 6)},{_name(9, 12)}")])),
        "family and given, accents and case ignored": (
            "Patient", _search("Patient", [("family", _name(7, 6).upper()), ("given", _name(-7, 7)[:4] + "́")])),
        "name": ("Patient", _search("Patient", [("name", _name(-7, 7)[:5])])),
        # the Provenance of every write (records/provenance.py): by target, patient, agent, recorded
        "Provenance?target=": ("Provenance", _search("Provenance", [("target", f"Patient/{p}")])),
        "_revinclude=Provenance:target": (
            "Provenance", {"r_target": {"$in": [f"DocumentReference/{p}", f"Patient/{pids[2]}"]}}),
        "a patient's Provenances since a date": (
            "Provenance", _search("Provenance", [("patient", f"Patient/{p}"), ("recorded", "ge2025-01-01")])),
        "the patient's Provenances under the patient's token": ("Provenance", _search("Provenance", [], patient=p)),
        "what one agent wrote": ("Provenance", _search("Provenance", [("agent", "Practitioner/x")])),
    }
    not_served = {name: _plan(db, rtype, flt)[:400] for name, (rtype, flt) in shapes.items()
                  if not _uses_index(_plan(db, rtype, flt))}
    # Patient/{id}/$access-history and AuditEvent?patient=…&_sort=-date: the patient's events, newest
    # first (the sort the search compiler sends), by an operator and under the patient's own token
    newest_first = dict(mongo.sort_spec(parse("AuditEvent", [("_sort", "-date")])))
    for name, flt in {"access history": _search("AuditEvent", [("patient", f"Patient/{p}")]),
                      "access history under the patient's token": _search(
                          "AuditEvent", [("patient", f"Patient/{p}")], patient=p)}.items():
        if not _uses_index(_plan(db, "AuditEvent", flt, newest_first)):
            not_served[name] = _plan(db, "AuditEvent", flt, newest_first)[:400]
    assert not not_served, "\n".join(f"{name}: {plan}" for name, plan in not_served.items())


def test_a_scan_is_reported_as_such(loaded):
    """The check above can fail: a filter on an unindexed field plans a sequential scan."""
    db, _, _ = loaded
    assert not _uses_index(_plan(db, "DocumentReference", {"s_description": "nothing"}))
    # :contains is a substring search: an unanchored regex, which stays a scan on every engine
    assert not _uses_index(_plan(db, "Patient", flatten(_search("Patient", [("family:contains", "abc")]))))
    # an `$or` with one unindexed branch cannot be served by indexes either
    assert not _uses_index(_plan(db, "DocumentReference", {"$or": [{"r_subject": "Patient/x"},
                                                                   {"s_description": "nothing"}]}))
