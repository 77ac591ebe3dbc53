"""The server imports the FHIR models of its types before it serves (issue 12): fhir.resources
imports a model, and each datatype a field holds, the first time it is needed, and in a server that
was the first request of each type, on the event loop (bench/first_use.py).

Each check runs in a fresh interpreter, the way a server process starts, and validates ordinary
resources of every type the server stores, with many datatypes (extensions included, whose value
may be of any type)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

P = {"reference": "Patient/p1"}
DR = {"reference": "Practitioner/d1"}
CC = {"coding": [{"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}], "text": "x"}
PERIOD = {"start": "2024-01-01", "end": "2024-12-31T10:00:00+01:00"}
ATTACHMENT = {"contentType": "application/pdf", "data": "JVBERi0=", "title": "CR", "creation": "2024-05-01"}
EXTENSIONS = [
    {"url": "urn:x:quantity", "valueQuantity": {"value": 1.5, "unit": "mg", "system": "http://unitsofmeasure.org",
                                                "code": "mg"}},
    {"url": "urn:x:range", "valueRange": {"low": {"value": 1}, "high": {"value": 2}}},
    {"url": "urn:x:ratio", "valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 2}}},
    {"url": "urn:x:timing", "valueTiming": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}},
    {"url": "urn:x:dosage", "valueDosage": {"text": "1 cp", "doseAndRate": [{"doseQuantity": {"value": 1}}]}},
    {"url": "urn:x:address", "valueAddress": {"city": "Lyon"}},
    {"url": "urn:x:annotation", "valueAnnotation": {"text": "note", "authorReference": DR}},
    {"url": "urn:x:money", "valueMoney": {"value": 10, "currency": "EUR"}},
    {"url": "urn:x:signature", "valueSignature": {"type": [{"system": "urn:iso-astm:E1762-95:2013",
                                                            "code": "1.2.840.10065.1.12.1.1"}],
                                                  "when": "2024-05-01T10:00:00Z", "who": DR}},
    {"url": "urn:x:nested", "extension": [{"url": "a", "valueCodeableConcept": CC}, {"url": "b", "valuePeriod": PERIOD}]},
]
RESOURCES = [
    {"resourceType": "Patient", "extension": EXTENSIONS, "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8",
                                                                         "value": "x", "period": PERIOD}],
     "name": [{"family": "Dupont", "given": ["Jean"], "use": "official"}], "gender": "male", "birthDate": "1970-01-01",
     "telecom": [{"system": "phone", "value": "0100000000"}], "address": [{"line": ["1 rue"], "city": "Paris"}],
     "maritalStatus": CC, "photo": [ATTACHMENT], "communication": [{"language": CC}],
     "contact": [{"relationship": [CC], "name": {"family": "Dupont"}}], "managingOrganization": {"reference": "Organization/o"}},
    {"resourceType": "Practitioner", "name": [{"family": "Martin"}], "qualification": [{"code": CC, "period": PERIOD}]},
    {"resourceType": "PractitionerRole", "practitioner": DR, "code": [CC], "period": PERIOD,
     "availableTime": [{"daysOfWeek": ["mon"], "availableStartTime": "08:00:00"}],
     "notAvailable": [{"description": "congé", "during": PERIOD}]},
    {"resourceType": "Organization", "name": "CH", "type": [CC], "contact": [{"purpose": CC, "name": {"text": "accueil"}}]},
    {"resourceType": "DocumentReference", "status": "current", "subject": P, "author": [DR], "type": CC, "category": [CC],
     "date": "2024-05-01T10:00:00+02:00", "securityLabel": [CC], "relatesTo": [{"code": "replaces", "target": P}],
     "content": [{"attachment": ATTACHMENT, "format": CC["coding"][0]}],
     "context": {"period": PERIOD, "facilityType": CC, "related": [P]},
     "meta": {"tag": [CC["coding"][0]], "security": [CC["coding"][0]]},
     "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}},
    {"resourceType": "List", "status": "current", "mode": "working", "subject": P, "orderedBy": CC,
     "note": [{"text": "n"}], "entry": [{"item": DR, "date": "2024-05-01", "flag": CC}]},
    {"resourceType": "Consent", "status": "active", "scope": CC, "category": [CC], "patient": P, "performer": [P],
     "policy": [{"uri": "urn:x"}], "sourceAttachment": ATTACHMENT,
     "provision": {"type": "permit", "period": PERIOD, "actor": [{"role": CC, "reference": DR}], "action": [CC],
                   "data": [{"meaning": "related", "reference": P}], "provision": [{"type": "deny", "dataPeriod": PERIOD}]}},
    {"resourceType": "Provenance", "target": [P], "recorded": "2024-05-01T10:00:00Z", "occurredPeriod": PERIOD,
     "agent": [{"who": DR, "type": CC}], "entity": [{"role": "source", "what": P}],
     "signature": [{"type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
                    "when": "2024-05-01T10:00:00Z", "who": DR}]},
    {"resourceType": "AuditEvent", "type": CC["coding"][0], "recorded": "2024-05-01T10:00:00Z", "action": "R",
     "outcome": "0", "period": PERIOD, "purposeOfEvent": [CC],
     "agent": [{"who": DR, "requestor": True, "network": {"address": "127.0.0.1", "type": "2"}}],
     "source": {"observer": {"display": "EHR"}, "type": [CC["coding"][0]]},
     "entity": [{"what": P, "query": "bmFtZT14", "detail": [{"type": "t", "valueString": "v"}]}]},
    {"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="},
    {"resourceType": "Bundle", "type": "transaction",
     "entry": [{"fullUrl": "urn:uuid:0c4e9f5a-1e8b-4a44-9b8f-6a1f6a9e3b10",
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x"}}]},
]

PROGRAM = textwrap.dedent("""
    import json, sys
    import fhir_server.fhir.validation as v
    if sys.argv[1] == "preload":
        v.preload_models()
    resources = json.loads(sys.stdin.read())
    before = set(sys.modules)
    issues = [[i.diagnostics for i in v.structural_issues(r, r["resourceType"])] for r in resources]
    new = sorted(m for m in set(sys.modules) - before if m.startswith(("fhir.resources", "fhir_core")))
    print(json.dumps({"issues": issues, "imported": new}))
""")


def _validate_in_fresh_interpreter(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], input=json.dumps(RESOURCES), capture_output=True,
                         text=True, cwd=ROOT, timeout=120, check=True)
    return json.loads(out.stdout)


def test_the_models_of_every_stored_type_are_imported_before_the_first_request():
    preloaded = _validate_in_fresh_interpreter("preload")
    assert preloaded["issues"] == [[] for _ in RESOURCES]  # every resource was valid, so wholly walked
    assert preloaded["imported"] == []
    # the control: without the preload, the same validations import models (what a first request did)
    lazy = _validate_in_fresh_interpreter("lazy")
    assert lazy["issues"] == preloaded["issues"]
    assert "fhir.resources.R4B.attachment" in lazy["imported"]
    assert "fhir.resources.R4B.documentreference" in lazy["imported"]
