"""The published CapabilityStatement (capability/) matches what running servers serve."""

import json
from pathlib import Path

PUBLISHED = Path(__file__).resolve().parent.parent / "capability" / "CapabilityStatement.json"
PUBLISHED_ORIGIN = "http://127.0.0.1:8080"  # the SMART OAuth URLs carry the origin; the published copy uses this


def _metadata(client) -> dict:
    """The served statement, with this test server's origin replaced by the published one."""
    text = client.get("/metadata").text
    origin = str(client.base_url).rstrip("/").removesuffix("/fhir")
    return json.loads(text.replace(origin + "/", PUBLISHED_ORIGIN + "/"))


def test_published_statement_equals_served_on_transactional_engine(fhir_txn):
    served = _metadata(fhir_txn)
    assert served == json.loads(PUBLISHED.read_text())


def test_served_statement_on_ferretdb_equals_published_transactions_included(fhir):
    """FerretDB has no engine transactions; the application-level commit protocol gives them."""
    served = _metadata(fhir)
    assert served == json.loads(PUBLISHED.read_text())
    assert {"code": "transaction"} in served["rest"][0]["interaction"]


def test_statement_lists_every_stored_type_and_interaction(fhir):
    served = fhir.get("/metadata").json()
    assert served["fhirVersion"] == "4.0.1" and served["kind"] == "instance"
    resources = {r["type"]: r for r in served["rest"][0]["resource"]}
    stored = {"Patient", "Practitioner", "PractitionerRole", "Organization", "Consent", "DocumentReference",
              "AuditEvent", "Provenance", "Binary", "List"}
    assert set(resources) == stored | {"StructureDefinition"}  # the published profiles, read-only
    for rtype in stored:
        codes = {i["code"] for i in resources[rtype]["interaction"]}
        assert {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create"} <= codes
    assert {i["code"] for i in resources["StructureDefinition"]["interaction"]} == {"read", "search-type"}
    assert "application/fhir+json" in served["format"]


SAMPLE = {"string": "a", "token": "a", "reference": "Patient/x", "date": "2020", "number": "1", "quantity": "1",
          "uri": "http://example.org/x", "composite": "a$b", "special": "a"}


def test_every_listed_search_parameter_is_accepted_in_strict_mode(fhir):
    """The statement lists exactly what search supports: each parameter, with a well-formed value,
    passes `Prefer: handling=strict` (which rejects unknown parameters)."""
    served = fhir.get("/metadata").json()
    checked = 0
    for resource in served["rest"][0]["resource"]:
        if resource["type"] != "StructureDefinition":  # the profiles are static: no writes
            assert resource["conditionalCreate"] is True and resource["conditionalDelete"] == "multiple"
        for sp in resource["searchParam"]:
            assert sp["type"] in SAMPLE and sp.get("documentation"), sp
            r = fhir.get(f"/{resource['type']}", params={sp["name"]: SAMPLE[sp["type"]], "_summary": "count"},
                         headers={"Prefer": "handling=strict"})
            assert r.status_code == 200, (resource["type"], sp["name"], r.text)
            checked += 1
        for inc in resource.get("searchInclude", ["*"])[1:]:
            r = fhir.get(f"/{resource['type']}", params={"_include": inc, "_count": "1"},
                         headers={"Prefer": "handling=strict"})
            assert r.status_code == 200, (inc, r.text)
    assert checked > 100
    unknown = fhir.get("/Patient", params={"shoe-size": "42"}, headers={"Prefer": "handling=strict"})
    assert unknown.status_code == 400
