"""SMART scope grammar (v1 and v2), v1→v2 mapping and the permission question, with hypothesis."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.access.compartment import COMPARTMENT_PARAMS, in_patient_compartment, matches_query, patients_of
from fhir_server.auth.scopes import ALL, INTERACTION_PERM, Rule, Scope, ScopeError, ScopeSet, parse_scope, v1_to_v2
from fhir_server.fhir.types import SUPPORTED_TYPES

CONTEXTS = st.sampled_from(["patient", "user", "system"])
TYPES = st.sampled_from([*SUPPORTED_TYPES, "*", "Observation"])
PERMSETS = st.sets(st.sampled_from("cruds"), min_size=1)
INTERACTIONS = st.sampled_from(sorted(INTERACTION_PERM))


def ordered(perms) -> str:
    return "".join(p for p in "cruds" if p in perms)


@given(CONTEXTS, TYPES, PERMSETS)
def test_v2_scopes_parse_and_round_trip(ctx, rtype, perms):
    text = f"{ctx}/{rtype}.{ordered(perms)}"
    s = parse_scope(text)
    assert s == Scope(ctx, rtype, frozenset(perms), (), 2)
    assert s.v2() == text and parse_scope(s.v2()) == s


@given(CONTEXTS, TYPES, st.lists(st.sampled_from("cruds"), min_size=2, max_size=6))
def test_unordered_or_repeated_permissions_are_rejected(ctx, rtype, letters):
    text = "".join(letters)
    if text == ordered(set(letters)):
        return  # that one is valid
    with pytest.raises(ScopeError):
        parse_scope(f"{ctx}/{rtype}.{text}")


@given(CONTEXTS, TYPES, st.sampled_from(["read", "write", "*"]))
def test_v1_scopes_map_to_v2(ctx, rtype, v1):
    s = parse_scope(f"{ctx}/{rtype}.{v1}")
    assert s.version == 1
    assert ordered(s.perms) == {"read": "rs", "write": "cud", "*": "cruds"}[v1]
    assert v1_to_v2(f"{ctx}/{rtype}.{v1}") == f"{ctx}/{rtype}.{ordered(s.perms)}"


@given(st.text(max_size=40))
def test_parse_never_crashes(text):
    try:
        s = parse_scope(text)
    except ScopeError:
        return
    assert s is None or s.perms <= set("cruds")


@pytest.mark.parametrize("text", ["patient/Observation.", "patient/observation.rs", "patient/*.x", "patient/*.rsc",
                                  "patient/Observation.read?category=x", "system/*.rs?", "user/*.rs?a",
                                  "patient/Observation.rs?=x", "patient/.rs"])
def test_malformed_resource_scopes(text):
    with pytest.raises(ScopeError):
        parse_scope(text)


@pytest.mark.parametrize("text", ["openid", "fhirUser", "launch", "launch/patient", "launch/encounter",
                                  "offline_access", "online_access", "profile"])
def test_non_resource_scopes(text):
    assert parse_scope(text) is None
    assert ScopeSet.parse(text).others == {text}


def test_granular_scope():
    s = parse_scope("patient/DocumentReference.rs?category=http://loinc.org|11488-4&status=current")
    assert s.perms == {"r", "s"} and s.query == (("category", "http://loinc.org|11488-4"), ("status", "current"))
    assert s.v2() == "patient/DocumentReference.rs?category=http://loinc.org|11488-4&status=current"


@given(CONTEXTS, TYPES, PERMSETS, INTERACTIONS, st.sampled_from(SUPPORTED_TYPES), st.booleans())
def test_permits_is_exactly_the_v2_table(ctx, stype, perms, interaction, rtype, has_patient):
    scopes = ScopeSet.parse(f"{ctx}/{stype}.{ordered(perms)}", patient="p1" if has_patient else None)
    expected = (INTERACTION_PERM[interaction] in perms and stype in ("*", rtype)
                and (ctx != "patient" or has_patient))
    assert scopes.permits(interaction, rtype) == expected


@given(st.lists(st.tuples(CONTEXTS, TYPES, PERMSETS), max_size=5), st.sampled_from(SUPPORTED_TYPES),
       st.sampled_from("cruds"))
def test_access_is_the_union_of_scopes(scopes, rtype, perm):
    text = " ".join(f"{c}/{t}.{ordered(p)}" for c, t, p in scopes)
    got = ScopeSet.parse(text, patient="p1").access(perm, rtype)
    granting = [(c, t, p) for c, t, p in scopes if perm in p and t in ("*", rtype)]
    if any(c != "patient" for c, _, _ in granting):
        assert got == ALL
    elif granting:
        assert got == (Rule("p1"),)
    else:
        assert got == ()


def test_user_scopes_of_a_patient_user_are_their_compartment():
    s = ScopeSet.parse("user/*.rs", user_patient="me")
    assert s.access("r", "DocumentReference") == (Rule("me"),)


# --- compartment membership ----------------------------------------------------------------------

OFFICIAL = Path("/tmp/medplum/package/dist/fhir/r4/compartmentdefinition-patient.json")


@pytest.mark.skipif(not OFFICIAL.exists(), reason="the official CompartmentDefinition JSON is not downloaded")
def test_compartment_table_is_the_official_definition():
    official = {r["code"]: tuple(r.get("param", ())) for r in json.loads(OFFICIAL.read_text())["resource"]}
    for rtype in SUPPORTED_TYPES:
        assert COMPARTMENT_PARAMS.get(rtype, ()) == official.get(rtype, ()), rtype


P = "p1"
MEMBERS = [
    ("Patient", {"resourceType": "Patient", "id": P}),
    ("Patient", {"resourceType": "Patient", "id": "other", "link": [{"other": {"reference": f"Patient/{P}"},
                                                                     "type": "seealso"}]}),
    ("DocumentReference", {"resourceType": "DocumentReference", "subject": {"reference": f"Patient/{P}"}}),
    ("DocumentReference", {"resourceType": "DocumentReference", "author": [{"reference": f"Patient/{P}"}]}),
    ("DocumentReference", {"resourceType": "DocumentReference", "subject": {"reference": f"Patient/{P}/_history/2"}}),
    ("Consent", {"resourceType": "Consent", "patient": {"reference": f"Patient/{P}"}}),
    ("Provenance", {"resourceType": "Provenance", "target": [{"reference": "DocumentReference/d"},
                                                             {"reference": f"Patient/{P}"}]}),
    ("AuditEvent", {"resourceType": "AuditEvent", "entity": [{"what": {"reference": f"Patient/{P}"}}]}),
    ("AuditEvent", {"resourceType": "AuditEvent", "agent": [{"who": {"reference": f"Patient/{P}"}}]}),
    ("List", {"resourceType": "List", "subject": {"reference": f"Patient/{P}"}}),
    ("List", {"resourceType": "List", "source": {"reference": f"Patient/{P}"}}),
    ("Binary", {"resourceType": "Binary", "securityContext": {"reference": f"Patient/{P}"}}),
]
NON_MEMBERS = [
    # another server's patient who happens to have the same id: compartment membership is for local
    # references only, as in searches (`subject=Patient/p1` does not match it either)
    ("DocumentReference", {"resourceType": "DocumentReference",
                           "subject": {"reference": f"https://x.example/fhir/Patient/{P}"}}),
    ("Patient", {"resourceType": "Patient", "id": "p10"}),
    ("DocumentReference", {"resourceType": "DocumentReference", "subject": {"reference": f"Patient/{P}0"}}),
    ("DocumentReference", {"resourceType": "DocumentReference", "subject": {"reference": f"Group/{P}"}}),
    ("DocumentReference", {"resourceType": "DocumentReference", "subject": {"reference": f"XPatient/{P}"}}),
    ("DocumentReference", {"resourceType": "DocumentReference", "author": [{"reference": "Practitioner/x"}]}),
    ("Consent", {"resourceType": "Consent", "patient": {"reference": "Patient/p2"}}),
    ("Provenance", {"resourceType": "Provenance", "target": [{"reference": f"DocumentReference/{P}"}]}),
    ("AuditEvent", {"resourceType": "AuditEvent", "source": {"observer": {"reference": f"Patient/{P}"}}}),
    ("List", {"resourceType": "List", "subject": {"reference": "Patient/p2"}}),
    ("Binary", {"resourceType": "Binary"}),
    ("Binary", {"resourceType": "Binary", "securityContext": {"reference": "DocumentReference/x"}}),
]


@pytest.mark.parametrize("rtype,resource", MEMBERS)
def test_in_compartment(rtype, resource):
    assert in_patient_compartment(rtype, resource, P)
    assert P in patients_of(rtype, resource)


@pytest.mark.parametrize("rtype,resource", NON_MEMBERS)
def test_not_in_compartment(rtype, resource):
    assert not in_patient_compartment(rtype, resource, P)


DOC = {"resourceType": "DocumentReference", "status": "current",
       "category": [{"coding": [{"system": "http://loinc.org", "code": "11488-4"}]}],
       "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]},
       "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}}


@pytest.mark.parametrize("query,expected", [
    ((("category", "http://loinc.org|11488-4"),), True),
    ((("category", "11488-4"),), True),
    ((("category", "http://other|11488-4"),), False),
    ((("category", "|11488-4"),), False),
    ((("category", "http://loinc.org|"),), True),
    ((("category", "x,11488-4"),), True),
    ((("category", "11488-4"), ("status", "superseded")), False),
    ((("status", "current"),), True),
    ((("type", "34133-9"),), True),
    ((("_security", "N"),), True),
    ((("_security", "R"),), False),
    ((("date", "2020"),), False),  # not understood: narrows, never widens
    ((("nonsense", "x"),), False),
])
def test_granular_matching(query, expected):
    assert matches_query("DocumentReference", DOC, query) is expected


def test_every_interaction_maps_to_one_letter():
    assert set(INTERACTION_PERM.values()) == set("cruds")
    for a, b in itertools.combinations(["c", "r", "u", "d", "s"], 2):
        assert a != b
