"""Required code bindings (fhir_server.fhir.bindings, data from tools/gen_required_bindings.py)."""

from __future__ import annotations

import copy
import importlib.util
import json
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.fhir.bindings import CHECKER, BindingChecker, BindingIssue, check_required_bindings

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = Path("/tmp/medplum/package/dist/fhir/r4")
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
DOCREF_STATUS_VS = "http://hl7.org/fhir/ValueSet/document-reference-status"

# Independent oracle: the codes as printed in the FHIR R4 spec pages.
GENDER_CODES = {"male", "female", "other", "unknown"}
DOCREF_STATUS_CODES = {"current", "superseded", "entered-in-error"}


def exprs(resource: dict) -> list[str]:
    return [i.expression for i in check_required_bindings(resource)]


def patient(**fields) -> dict:
    base = {
        "resourceType": "Patient",
        "id": "p1",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jane</div>'},
        "identifier": [{"use": "official", "system": "urn:oid:1.2.3", "value": "123"}],
        "name": [{"use": "official", "family": "Doe", "given": ["Jane"]}],
        "telecom": [{"system": "phone", "value": "555-1234", "use": "home"}],
        "gender": "female",
        "birthDate": "1980-01-01",
        "address": [{"use": "home", "type": "both", "city": "Springfield"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]},
    }
    base.update(fields)
    return base


# --- Patient and datatypes -----------------------------------------------------------


def test_valid_patient_has_no_issues():
    assert check_required_bindings(patient()) == []


def test_patient_gender_robot_rejected():
    issues = check_required_bindings(patient(gender="robot"))
    assert issues == [
        BindingIssue(
            "Patient.gender",
            "Patient.gender: 'robot' is not in the required value set " + GENDER_VS,
        )
    ]


def test_patient_gender_female_accepted_and_case_sensitive():
    assert check_required_bindings(patient(gender="female")) == []
    assert exprs(patient(gender="Female")) == ["Patient.gender"]


def test_human_name_identifier_contact_point_in_arrays_have_indexes():
    p = patient(
        name=[{"use": "official", "family": "A"}, {"use": "nick", "family": "B"}],
        identifier=[{"use": "usual"}, {"use": "secondary"}, {"use": "primary"}],
        telecom=[{"system": "phone", "value": "1"}, {"system": "pager-ish", "value": "2"}],
    )
    issues = check_required_bindings(p)
    assert sorted(i.expression for i in issues) == [
        "Patient.identifier[2].use",
        "Patient.name[1].use",
        "Patient.telecom[1].system",
    ]
    by_expr = {i.expression: i.diagnostics for i in issues}
    assert "'nick'" in by_expr["Patient.name[1].use"]
    assert "http://hl7.org/fhir/ValueSet/name-use" in by_expr["Patient.name[1].use"]
    assert "http://hl7.org/fhir/ValueSet/identifier-use" in by_expr["Patient.identifier[2].use"]
    assert "http://hl7.org/fhir/ValueSet/contact-point-system" in by_expr["Patient.telecom[1].system"]


def test_nested_backbone_and_datatype_in_backbone():
    p = patient(contact=[{"gender": "male"}, {"gender": "m", "telecom": [{"use": "office"}], "address": {"use": "x"}}])
    assert sorted(exprs(p)) == [
        "Patient.contact[1].address.use",
        "Patient.contact[1].gender",
        "Patient.contact[1].telecom[0].use",
    ]


def test_narrative_status():
    p = patient(text={"status": "auto", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'})
    issues = check_required_bindings(p)
    assert [i.expression for i in issues] == ["Patient.text.status"]
    assert "http://hl7.org/fhir/ValueSet/narrative-status" in issues[0].diagnostics
    assert check_required_bindings(patient(text={"status": "extensions", "div": "<div/>"})) == []


def test_primitive_array_of_codes():
    role = {
        "resourceType": "PractitionerRole",
        "availableTime": [{"daysOfWeek": ["mon", "tue"]}, {"daysOfWeek": ["wed", "funday", "fri"]}],
    }
    issues = check_required_bindings(role)
    assert [i.expression for i in issues] == ["PractitionerRole.availableTime[1].daysOfWeek[1]"]
    assert "'funday'" in issues[0].diagnostics


def test_extension_choice_and_primitive_extension_are_walked():
    p = patient(
        extension=[{"url": "http://example.org/w", "valueQuantity": {"value": 1, "comparator": "~"}}],
        _gender={"extension": [{"url": "http://example.org/x", "valueAge": {"value": 3, "comparator": "<"}}]},
        _birthDate={"extension": [{"url": "http://example.org/y", "valueCode": "anything"}]},
    )
    assert exprs(p) == ["Patient.extension[0].valueQuantity.comparator"]
    p["_gender"]["extension"][0]["valueAge"]["comparator"] = "=="
    assert sorted(exprs(p)) == [
        "Patient._gender.extension[0].valueAge.comparator",
        "Patient.extension[0].valueQuantity.comparator",
    ]


def test_contained_resource_of_covered_type_is_checked_others_skipped():
    p = patient(
        contained=[
            {"resourceType": "Observation", "id": "o", "status": "not-a-status"},  # not covered: skipped
            {"resourceType": "Practitioner", "id": "pr", "gender": "robot"},
        ]
    )
    assert exprs(p) == ["Patient.contained[1].gender"]


# --- other covered resources -----------------------------------------------------------


def test_document_reference_status_and_relates_to_code():
    doc = {
        "resourceType": "DocumentReference",
        "status": "final",  # that's a composition-status code, not a document-reference-status one
        "docStatus": "final",
        "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/1"}}, {"code": "copies"}],
        "content": [{"attachment": {"contentType": "application/x-whatever"}}],
    }
    issues = check_required_bindings(doc)
    assert [i.expression for i in issues] == ["DocumentReference.status", "DocumentReference.relatesTo[1].code"]
    assert DOCREF_STATUS_VS in issues[0].diagnostics
    assert "http://hl7.org/fhir/ValueSet/document-relationship-type" in issues[1].diagnostics
    doc["status"] = "current"
    doc["relatesTo"][1]["code"] = "appends"
    assert check_required_bindings(doc) == []


def test_consent_provision_type_including_nested_provisions():
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "provision": {
            "type": "permit",
            "provision": [
                {"type": "deny"},
                {"type": "maybe", "provision": [{"type": "permit"}, {"type": "never", "data": [{"meaning": "x"}]}]},
            ],
        },
    }
    issues = check_required_bindings(consent)
    assert [i.expression for i in issues] == [
        "Consent.provision.provision[1].type",
        "Consent.provision.provision[1].provision[1].type",
        "Consent.provision.provision[1].provision[1].data[0].meaning",
    ]
    assert "http://hl7.org/fhir/ValueSet/consent-provision-type" in issues[0].diagnostics
    assert exprs({"resourceType": "Consent", "status": "accepted"}) == ["Consent.status"]


def test_audit_event_action_and_outcome():
    ev = {"resourceType": "AuditEvent", "action": "C", "outcome": "0", "agent": [{"network": {"type": "1"}}]}
    assert check_required_bindings(ev) == []
    ev.update(action="X", outcome="4")  # 0, 4, 8, 12 are the outcome codes
    ev["agent"][0]["network"]["type"] = "9"
    issues = check_required_bindings(ev)
    assert [i.expression for i in issues] == ["AuditEvent.action", "AuditEvent.agent[0].network.type"]
    assert "http://hl7.org/fhir/ValueSet/audit-event-action" in issues[0].diagnostics


def test_bundle_entry_resource_with_bad_code():
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "DocumentReference", "status": "draft"}, "request": {"method": "PUT"}},
            {"resource": {"resourceType": "Observation", "status": "bogus"}, "request": {"method": "FETCH"}},
        ],
    }
    issues = check_required_bindings(bundle)
    assert [i.expression for i in issues] == ["Bundle.entry[1].resource.status", "Bundle.entry[2].request.method"]
    assert issues[0].diagnostics == (
        "Bundle.entry[1].resource.status: 'draft' is not in the required value set " + DOCREF_STATUS_VS
    )
    assert exprs(dict(bundle, type="bag")) == ["Bundle.type"] + [i.expression for i in issues]


def test_bundle_response_outcome_and_operation_outcome():
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": "400",
                    "outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "bad", "code": "invalid"}]},
                }
            }
        ],
    }
    assert exprs(bundle) == ["Bundle.entry[0].response.outcome.issue[0].severity"]


def test_parameters_choice_types_parts_and_resources():
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "q", "valueQuantity": {"value": 1, "comparator": "<="}},
            {"name": "t", "valueTiming": {"repeat": {"periodUnit": "fortnight", "when": ["HS", "MORN", "LUNCH"]}}},
            {"name": "p", "part": [{"name": "inner", "part": [{"name": "x", "valueContactPoint": {"use": "?"}}]}]},
            {"name": "r", "resource": {"resourceType": "List", "status": "current", "mode": "dunno"}},
        ],
    }
    assert exprs(params) == [
        "Parameters.parameter[1].valueTiming.repeat.periodUnit",
        "Parameters.parameter[1].valueTiming.repeat.when[2]",
        "Parameters.parameter[2].part[0].part[0].valueContactPoint.use",
        "Parameters.parameter[3].resource.mode",
    ]


def test_provenance_and_organization():
    prov = {"resourceType": "Provenance", "entity": [{"role": "source"}, {"role": "origin"}]}
    assert exprs(prov) == ["Provenance.entity[1].role"]
    org = {"resourceType": "Organization", "contact": [{"address": {"use": "billing", "type": "virtual"}}]}
    assert exprs(org) == ["Organization.contact[0].address.type"]


def test_skipped_value_sets_are_not_checked_and_are_recorded():
    binary = {"resourceType": "Binary", "contentType": "definitely/not-a-registered-mime-type"}
    assert check_required_bindings(binary) == []
    skipped = {s["path"]: s for s in CHECKER.skipped}
    assert skipped["Binary.contentType"]["valueSet"] == "http://hl7.org/fhir/ValueSet/mimetypes"
    assert "urn:ietf:bcp:13" in skipped["Binary.contentType"]["reason"]
    assert "Attachment.contentType" in skipped
    assert "Patient.gender" not in skipped


def test_uncovered_and_non_resource_input_gives_no_issues():
    assert check_required_bindings({"resourceType": "Observation", "status": "nonsense"}) == []
    assert check_required_bindings({"gender": "robot"}) == []
    for junk in (None, [], "Patient", 5, {"resourceType": ["Patient"]}, {"resourceType": {"a": 1}}):
        assert check_required_bindings(junk) == []  # type: ignore[arg-type]


def test_wrong_json_types_are_skipped_without_raising():
    p = patient(
        gender=5,
        name="Jane",
        telecom=[None, 3, "x", {"system": ["phone"]}, {"system": "fax?"}],
        contained={"resourceType": ["Patient"]},
        text=[1, 2],
        address=[{"use": {"nested": True}}],
        _gender=["bad"],
        extension=[{"url": "u", "valueQuantity": "1"}],
    )
    assert exprs(p) == ["Patient.telecom[4].system"]


def test_deep_nesting_does_not_hit_recursion_limit():
    provision: dict = {"type": "nope"}
    for _ in range(5000):
        provision = {"type": "permit", "provision": [provision]}
    issues = check_required_bindings({"resourceType": "Consent", "status": "active", "provision": provision})
    assert len(issues) == 1
    assert issues[0].expression.endswith(".provision[0].type")
    assert issues[0].expression.count("provision") == 5001


# --- Coding / CodeableConcept ------------------------------------------------------------


def test_no_coded_required_bindings_in_the_covered_r4_types():
    # FHIR R4 has no required binding on a Coding or CodeableConcept element in Patient,
    # Practitioner, PractitionerRole, Organization, Consent, DocumentReference, AuditEvent,
    # Provenance, Binary, List, Bundle, OperationOutcome, Parameters (nor in the datatypes they
    # reach): every required binding there is on a `code`. So the Coding/CodeableConcept rules
    # are tested below on a synthetic table. If a regeneration ever adds one, this fails as a
    # reminder to add a real-data test.
    data = json.loads(resources.files("fhir_server").joinpath("data").joinpath("required_bindings.json").read_text())
    coded = [
        f"{key}.{name}"
        for key, table in data["types"].items()
        for name, spec in table.items()
        if spec[0] in ("Coding", "CodeableConcept")
    ]
    assert coded == []
    assert len(data["checked"]) > 40


SYNTHETIC = {
    "resources": ["Thing"],
    "types": {
        "Thing": {
            "coding": ["Coding", "urn:vs", None],
            "concept": ["CodeableConcept", "urn:vs", "CodeableConcept"],
            "concepts": ["CodeableConcept", "urn:vs", None],
        },
        "CodeableConcept": {"extension": ["T", "Extension"]},
        "Extension": {"valueCode": ["code", "urn:vs"]},
    },
    "valueSets": {"urn:vs": {"urn:sys": ["a", "b"], "urn:other": ["c"]}},
}


def test_coding_required_binding_on_synthetic_table():
    checker = BindingChecker(SYNTHETIC)
    assert checker.check({"resourceType": "Thing", "coding": {"system": "urn:sys", "code": "a"}}) == []
    assert checker.check({"resourceType": "Thing", "coding": {"system": "urn:other", "code": "c"}}) == []
    for bad in ({"system": "urn:sys", "code": "c"}, {"system": "urn:x", "code": "a"}, {"code": "a"}, {"display": "A"}):
        issues = checker.check({"resourceType": "Thing", "coding": bad})
        assert [i.expression for i in issues] == ["Thing.coding"], bad
        assert "urn:vs" in issues[0].diagnostics


def test_codeable_concept_needs_at_least_one_coding_from_the_value_set():
    checker = BindingChecker(SYNTHETIC)
    good = {"coding": [{"system": "http://snomed.info/sct", "code": "123"}, {"system": "urn:sys", "code": "b"}]}
    assert checker.check({"resourceType": "Thing", "concept": good}) == []
    for bad in (
        {"coding": [{"system": "http://snomed.info/sct", "code": "123"}]},
        {"coding": [{"system": "urn:other", "code": "a"}]},
        {"text": "text only"},
        {"coding": []},
    ):
        issues = checker.check({"resourceType": "Thing", "concept": bad})
        assert [i.expression for i in issues] == ["Thing.concept"], bad
    issues = checker.check({"resourceType": "Thing", "concepts": [good, {"text": "x"}]})
    assert [i.expression for i in issues] == ["Thing.concepts[1]"]
    # the CodeableConcept itself is walked too (its extensions)
    ext = dict(good, extension=[{"url": "u", "valueCode": "zz"}])
    assert [i.expression for i in checker.check({"resourceType": "Thing", "concept": ext})] == [
        "Thing.concept.extension[0].valueCode"
    ]


# --- property tests ------------------------------------------------------------------------


def test_value_set_expansions_match_the_spec():
    assert set().union(*CHECKER.value_sets[GENDER_VS].values()) == GENDER_CODES
    assert set().union(*CHECKER.value_sets[DOCREF_STATUS_VS].values()) == DOCREF_STATUS_CODES
    # hierarchical code system: nested concepts are included
    issue_types = CHECKER.value_sets["http://hl7.org/fhir/ValueSet/issue-type"]["http://hl7.org/fhir/issue-type"]
    assert {"invalid", "structure", "not-found", "deleted"} <= issue_types
    # event-timing mixes a FHIR code system with selected v3 TimingEvent codes
    timing = CHECKER.value_sets["http://hl7.org/fhir/ValueSet/event-timing"]
    assert "MORN" in timing["http://hl7.org/fhir/event-timing"]
    assert "HS" in timing["http://terminology.hl7.org/CodeSystem/v3-TimingEvent"]


@given(st.sampled_from(sorted(GENDER_CODES)), st.sampled_from(sorted(DOCREF_STATUS_CODES)))
def test_every_listed_code_is_accepted(gender, status):
    assert check_required_bindings(patient(gender=gender)) == []
    assert check_required_bindings({"resourceType": "DocumentReference", "status": status}) == []


@given(st.text(max_size=30))
def test_other_strings_are_rejected(s):
    gender_issues = exprs(patient(gender=s))
    status_issues = exprs({"resourceType": "DocumentReference", "status": s})
    assert gender_issues == ([] if s in GENDER_CODES else ["Patient.gender"])
    assert status_issues == ([] if s in DOCREF_STATUS_CODES else ["DocumentReference.status"])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["resourceType", "gender", "name", "use", "contained", "extension", "valueQuantity", "comparator",
             "provision", "type", "entry", "resource", "_gender", "telecom", "system", "text", "status"]
        ),
        children,
        max_size=5,
    ),
    max_leaves=30,
)


@settings(max_examples=300)
@given(st.sampled_from(["Patient", "Consent", "Bundle", "Parameters"]), st.dictionaries(st.text(max_size=12), JSON))
def test_arbitrary_json_never_raises(rt, body):
    body["resourceType"] = rt
    issues = check_required_bindings(body)
    assert all(isinstance(i, BindingIssue) and i.expression.startswith(rt) for i in issues)


# --- the data file is what the generator produces ------------------------------------------------


@pytest.mark.skipif(not DEFINITIONS.is_dir(), reason="FHIR definitions not unpacked at /tmp/medplum")
def test_data_file_is_up_to_date_with_generator():
    spec = importlib.util.spec_from_file_location("gen_required_bindings", ROOT / "tools" / "gen_required_bindings.py")
    gen = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(gen)
    text = gen.dump(gen.generate(DEFINITIONS))
    shipped = resources.files("fhir_server").joinpath("data").joinpath("required_bindings.json").read_text()
    assert text == shipped
    assert len(text.encode()) < 300_000


def test_checker_does_not_mutate_input():
    p = patient(gender="robot", contained=[{"resourceType": "Practitioner", "gender": "x"}])
    before = copy.deepcopy(p)
    check_required_bindings(p)
    assert p == before
