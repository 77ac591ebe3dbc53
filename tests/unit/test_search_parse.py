"""Search parameters, normalisation, parsing and filter shapes, without a database.

Spec: https://hl7.org/fhir/R4/search.html. The database-backed comparison with the oracle lives in
tests/test_search_engine.py.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.search import SearchError, compile, index_fields, params_for, parse, sort_spec
from fhir_server.search import normalize as nz
from fhir_server.search.extract import index_keys, values_of
from fhir_server.search.mongo import merge
from fhir_server.search.parse import (
    Clause,
    CompositeValue,
    DateValue,
    HasClause,
    NumberValue,
    OfTypeValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
)
from fhir_server.search.registry import SearchParam, resource_types

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = Path("/tmp/medplum/package/dist/fhir/r4")
TYPES = ["AuditEvent", "Binary", "Consent", "DocumentReference", "List", "Organization", "Patient", "Practitioner",
         "PractitionerRole", "Provenance"]


# --- registry ------------------------------------------------------------------------------------

def test_registry_covers_our_types():
    assert sorted(resource_types()) == TYPES
    for rtype in TYPES:
        params = params_for(rtype)
        for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"):
            assert code in params
    # R4 defines no Binary parameter of its own; this server adds `securitycontext` (whose data it is)
    assert set(params_for("Binary")) == {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source",
                                         "securitycontext"}
    assert params_for("Observation") == {}
    p = params_for("Patient")
    assert p["family"].type == "string" and p["family"].expression == "Patient.name.family"
    assert p["birthdate"].multiple is False and p["identifier"].multiple is True
    assert p["gender"].implicit_systems == {"http://hl7.org/fhir/administrative-gender"}
    dr = params_for("DocumentReference")
    # restricted to our type from the multi-type definition
    assert dr["identifier"].expression == "DocumentReference.masterIdentifier | DocumentReference.identifier"
    assert dr["patient"].targets == ("Patient",)
    assert [c.code for c in dr["relationship"].components] == ["relatesto", "relation"]
    assert [c.expression for c in dr["relationship"].components] == ["target", "code"]  # R4 swap fixed


def test_index_field_names_start_with_a_letter():
    for rtype in TYPES:
        for param in params_for(rtype).values():
            assert param.field[0].isalpha() or param.field in ("_id", "_lu")
    keys = [k for rtype in TYPES for spec in index_keys(rtype) for k, _ in spec]
    assert all(k[0].isalpha() or k == "_lu" for k in keys)


@pytest.mark.skipif(not DEFINITIONS.exists(), reason="R4 definitions not unpacked in /tmp/medplum")
def test_generator_is_deterministic_and_matches_the_committed_file(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", ROOT / "tools/gen_search_parameters.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    out = tmp_path / "sp.json"
    gen.main(["gen", str(DEFINITIONS), str(out)])
    assert out.read_text() == (ROOT / "fhir_server/data/search_parameters.json").read_text()


# --- normalisation -------------------------------------------------------------------------------

def test_fold():
    assert nz.fold("Hélène") == "helene"
    assert nz.fold("  DUPONT  Martin ") == "dupont martin"
    assert nz.fold("Straße") == "strasse"
    assert nz.fold("Ærwen") == "ærwen"  # no decomposition: stays a letter of its own
    assert nz.fold("Ève") == nz.fold("E\u0300ve") == "eve"


def d(*args):
    return datetime(*args, tzinfo=UTC)


def test_date_ranges_follow_precision():
    assert nz.date_range("1985") == (d(1985, 1, 1), d(1986, 1, 1))
    assert nz.date_range("1985-12") == (d(1985, 12, 1), d(1986, 1, 1))
    assert nz.date_range("1985-02-28") == (d(1985, 2, 28), d(1985, 3, 1))
    assert nz.date_range("2026-01-01T10:00:00+01:00") == (d(2026, 1, 1, 9), d(2026, 1, 1, 9, 0, 1))
    assert nz.date_range("2026-01-01T10:00+01:00") == (d(2026, 1, 1, 9), d(2026, 1, 1, 9, 1))
    assert nz.date_range("2026-01-01T10:00:00.5Z") == (d(2026, 1, 1, 10, 0, 0, 500000),
                                                        d(2026, 1, 1, 10, 0, 0, 600000))
    # beyond milliseconds, bounds are rounded outwards (BSON dates hold milliseconds)
    assert nz.date_range("2026-01-01T10:00:00.1234Z") == (d(2026, 1, 1, 10, 0, 0, 123000),
                                                           d(2026, 1, 1, 10, 0, 0, 124000))
    assert nz.date_range("9999") == (d(9999, 1, 1), nz.MAX_INSTANT)
    for bad in ("1985-13", "1985-02-30", "85", "2026-01-01T25:00:00Z", "2026-01-01T10:00:00+15:00", "tomorrow"):
        with pytest.raises(ValueError):
            nz.date_range(bad)


def test_period_and_number_ranges():
    assert nz.period_range("2020", None) == (d(2020, 1, 1), nz.MAX_INSTANT)
    assert nz.period_range(None, "2020-05") == (nz.MIN_INSTANT, d(2020, 6, 1))
    assert nz.number_range("100") == (Decimal("100"), Decimal("99.5"), Decimal("100.5"))
    assert nz.number_range("100.00")[1:] == (Decimal("99.995"), Decimal("100.005"))
    assert nz.number_range("1e2")[1:] == (Decimal("50"), Decimal("150"))
    with pytest.raises(ValueError):
        nz.number_range("12a")


def test_references():
    assert nz.reference_key("Patient/123") == "Patient/123"
    assert nz.reference_key("Patient/123/_history/4") == "Patient/123"
    assert nz.reference_key("http://other/fhir/Patient/1") == "http://other/fhir/Patient/1"
    assert nz.reference_key("http://me/fhir/Patient/1", "http://me/fhir/") == "Patient/1"
    assert nz.reference_key("#contained") is None
    assert nz.reference_type("http://x/fhir/Group/9") == "Group"


# --- index fields --------------------------------------------------------------------------------

PATIENT = {
    "resourceType": "Patient", "id": "p",
    "name": [{"family": "Dupont", "given": ["Hélène", "Marie"]}],
    "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "285037511100564",
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}]}},
                   {"value": "a|b"}],
    "telecom": [{"system": "email", "value": "h@example.fr"}, {"system": "phone", "value": "0600000000"}],
    "birthDate": "1985-03", "gender": "female", "active": True, "deceasedDateTime": "2020-01-01",
    "meta": {"tag": [{"system": "urn:t", "code": "x"}], "profile": ["http://p/1"]},
    "generalPractitioner": [{"reference": "Practitioner/dr"}, {"identifier": {"system": "urn:rpps", "value": "1"}}],
}


def test_patient_index_fields():
    f = index_fields(PATIENT)
    assert f["s_family"] == ["dupont"] and f["sx_family"] == ["Dupont"]
    assert f["s_name"] == ["dupont", "helene", "marie"]
    # starts-with search: every prefix up to MAX_PREFIX characters of each folded value (search/prefix.py)
    assert f["p_family"] == ["d", "du", "dup", "dupo", "dupon", "dupont"]
    assert f["p_given"] == ["h", "he", "hel", "hele", "helen", "helene", "m", "ma", "mar", "mari", "marie"]
    assert "p_address" not in f and "p_phonetic" not in f  # only the parameters of prefix.PREFIXED
    assert f["t_identifier"] == ["285037511100564", "urn:oid:1.2.250.1.213.1.4.8|285037511100564",
                                 "urn:oid:1.2.250.1.213.1.4.8|", "a\\|b", "|a\\|b"]
    assert f["ti_identifier"] == ["http://terminology.hl7.org/CodeSystem/v2-0203|NI|285037511100564"]
    assert f["t_email"] == ["h@example.fr", "email|h@example.fr", "email|"]
    assert f["d_birthdate"] == {"lo": d(1985, 3, 1), "hi": d(1985, 4, 1)}
    assert f["t_gender"] == "female" and f["t_active"] == "true" and f["t_deceased"] == "true"
    assert f["d_death-date"]["lo"] == d(2020, 1, 1)
    assert f["t__tag"] == ["x", "urn:t|x", "urn:t|"] and f["u__profile"] == ["http://p/1"]
    assert f["r_general-practitioner"] == ["Practitioner/dr"]
    assert f["ri_general-practitioner"] == ["1", "urn:rpps|1", "urn:rpps|"]
    assert "_id" not in f and "_lu" not in f
    assert not any(v in ([], None, "") for v in f.values())
    assert "t_deceased" in index_fields({"resourceType": "Patient", "id": "x"})  # false when absent


def test_reference_where_resolve_and_composites():
    doc = {
        "resourceType": "DocumentReference", "id": "d", "status": "current", "subject": {"reference": "Group/g"},
        "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/old"}}],
        "content": [{"attachment": {"contentType": "application/pdf"}}],
    }
    f = index_fields(doc)
    assert f["r_subject"] == "Group/g" and "r_patient" not in f
    assert f["c_relationship"] == ["DocumentReference/old$replaces"]
    audit = {"resourceType": "AuditEvent", "id": "a", "recorded": "2026-01-01T00:00:00Z",
             "agent": [{"who": {"reference": "Patient/1"}, "requestor": True}],
             "entity": [{"what": {"reference": "Patient/2"}}, {"what": {"reference": "DocumentReference/x"}}]}
    f = index_fields(audit)
    assert f["r_patient"] == ["Patient/1", "Patient/2"]
    assert f["r_entity"] == ["Patient/2", "DocumentReference/x"]


def test_compound_indexes_hold_at_most_one_array():
    samples = [PATIENT, {
        "resourceType": "DocumentReference", "id": "d", "subject": {"reference": "Patient/p"},
        "type": {"coding": [{"system": "http://loinc.org", "code": "1"}, {"code": "2"}]},
        "date": "2026-01-01T00:00:00Z", "identifier": [{"value": "1"}, {"value": "2"}],
    }, {
        "resourceType": "AuditEvent", "id": "a", "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Patient/1"}}, {"who": {"reference": "Practitioner/1"}}],
        "entity": [{"what": {"reference": "Patient/2"}}],
    }]
    for res in samples:
        fields = index_fields(res)
        for keys in index_keys(res["resourceType"]):
            arrays = [k for k, _ in keys if isinstance(fields.get(k.split(".")[0]), list)]
            assert len(arrays) <= 1, (res["resourceType"], keys)


def test_every_compartment_reference_and_prefixed_string_leads_an_index():
    """A patient token's search is an `$or` over the compartment's references, which an engine serves
    from indexes only when each branch has one (docs/mongodb-compat.md); prefix search needs its own."""
    from fhir_server.access.compartment import membership_params
    from fhir_server.search.prefix import PREFIXED

    for rtype in TYPES:
        leading = {keys[0][0] for keys in index_keys(rtype)}
        wanted = {f"r_{code}" for code in membership_params(rtype)} | {f"p_{c}" for c in PREFIXED.get(rtype, ())}
        assert wanted <= leading, (rtype, wanted - leading)


def test_string_search_compiles_to_prefix_token_equality():
    from fhir_server.search.prefix import MAX_PREFIX

    assert compile(parse("Patient", [("family", "DUPé")])) == {"p_family": "dupe"}
    assert compile(parse("Patient", [("given", "Hélène,Marie")])) == {"p_given": {"$in": ["helene", "marie"]}}
    long = "Dupond-Martinez"
    assert compile(parse("Patient", [("family", long)])) == {"$and": [
        {"p_family": "dupond-martinez"[:MAX_PREFIX], "s_family": {"$regex": "^dupond\\-martinez"}}]}
    assert compile(parse("Patient", [("family", "\u0301")])) == {"s_family": {"$exists": True}}
    assert compile(parse("Patient", [("family:contains", "pon")])) == {"s_family": {"$regex": "pon"}}
    assert compile(parse("Patient", [("address-city", "Par")])) == {"s_address-city": {"$regex": "^par"}}


def test_fhirpath_fallback_for_expressions_outside_the_fast_subset():
    param = SearchParam(code="x", type="token", base="Patient", expression="Patient.telecom.where(use='home').value")
    assert [v for v, _ in values_of({"resourceType": "Patient", "telecom": [
        {"use": "home", "value": "1"}, {"use": "work", "value": "2"}]}, param)] == ["1"]


# --- parsing -------------------------------------------------------------------------------------

def test_parse_values_and_modifiers():
    q = parse("Patient", [
        ("name", "helene,jerome"), ("family:exact", "Dupont"), ("given:contains", "ar"),
        ("identifier", "urn:oid:1|123"), ("identifier", "|x"), ("identifier", "sys|"), ("gender", "male"),
        ("birthdate", "ge1985"), ("birthdate", "lt1990-06"), ("active:missing", "true"), ("gender:not", "male"),
        ("identifier:of-type", "http://t|NI|123"), ("general-practitioner:identifier", "urn:rpps|1"),
        ("general-practitioner:Practitioner", "dr"), ("organization", "Organization/o"), ("telecom:text", "home"),
    ])
    c = q.clauses
    assert c[0].values == (StringValue("helene"), StringValue("jerome"))
    assert (c[1].modifier, c[2].modifier) == ("exact", "contains")
    assert c[3].values == (TokenValue("urn:oid:1", "123"),)
    assert c[4].values == (TokenValue("", "x"),) and c[5].values == (TokenValue("sys", None),)
    assert c[6].values == (TokenValue(None, "male"),)
    assert isinstance(c[7].values[0], DateValue) and c[7].values[0].prefix == "ge"
    assert c[8].values[0].lo == d(1990, 6, 1)
    assert c[9].missing is True and c[10].modifier == "not"
    assert c[11].values == (OfTypeValue("http://t", "NI", "123"),)
    assert c[12].values == (TokenValue("urn:rpps", "1"),)
    assert c[13].values == (ReferenceValue("Practitioner", "dr", None),)
    assert c[14].values == (ReferenceValue("Organization", "o", None),)
    assert c[15].values == (StringValue("home"),)
    assert q.unknown == []


def test_escaping():
    q = parse("Patient", [("identifier", r"urn:a|x\,y,z\|w"), ("family", r"a\\b")])
    assert q.clauses[0].values == (TokenValue("urn:a", "x,y"), TokenValue(None, "z|w"))
    assert q.clauses[1].values == (StringValue("a\\b"),)
    q = parse("DocumentReference", [("relationship", r"DocumentReference/1$replaces")])
    assert q.clauses[0].values == (CompositeValue((ReferenceValue("DocumentReference", "1", None),
                                                   TokenValue(None, "replaces"))),)


def test_chains_and_has():
    q = parse("DocumentReference", [("subject:Patient.organization.name", "Hôpital"), ("patient.identifier", "123")])
    chain = q.clauses[0].chain
    assert list(chain.clauses) == ["Patient"]
    inner = chain.clauses["Patient"]
    assert inner.name == "organization" and list(inner.chain.clauses) == ["Organization"]
    assert inner.chain.clauses["Organization"].values == (StringValue("Hôpital"),)
    assert q.clauses[0].key == "subject:Patient.organization.name=H%C3%B4pital"
    # without a type modifier: every target type that has the parameter
    q = parse("DocumentReference", [("subject.identifier", "123")])
    assert sorted(q.clauses[0].chain.clauses) == ["Patient", "Practitioner"]
    q = parse("Patient", [("_has:DocumentReference:patient:_has:AuditEvent:entity:type", "rest")])
    h = q.clauses[0]
    assert isinstance(h, HasClause) and h.source_type == "DocumentReference" and h.ref_param.code == "patient"
    assert isinstance(h.inner, HasClause) and h.inner.source_type == "AuditEvent"
    assert q.needs_resolution() == [h]
    with pytest.raises(SearchError):
        parse("Patient", [("_has:DocumentReference", "x")])
    with pytest.raises(SearchError):
        parse("Patient", [("name.family", "x")])  # not a reference
    assert parse("Patient", [("_has:Observation:subject:code", "x")]).unknown  # a type we do not serve
    assert parse("DocumentReference", [("subject:Patient.nosuch", "x")]).unknown


def test_result_parameters():
    q = parse("DocumentReference", [
        ("_sort", "-date,_id"), ("_count", "20"), ("_total", "accurate"), ("_summary", "count"),
        ("_elements", "id,subject"), ("_include", "DocumentReference:subject"),
        ("_include", "DocumentReference:author:Practitioner"), ("_revinclude", "Provenance:target"),
        ("_include:iterate", "Patient:organization"), ("_format", "json"), ("_foo", "1"), ("bar", "2"),
    ])
    assert q.sort == [("date", True), ("_id", False)]
    assert (q.count, q.total, q.summary, q.elements) == (20, "accurate", "count", ["id", "subject"])
    assert [i.render() for i in q.include] == [
        "DocumentReference:subject", "DocumentReference:author:Practitioner", "Patient:organization"]
    assert q.include[2].iterate and q.revinclude[0].source_type == "Provenance"
    assert q.control == {"_format": "json"}
    assert q.unknown == [("_foo", "1"), ("bar", "2")]
    assert sort_spec(q) == [("d_date.lo", -1), ("_id", 1)]
    rendered = q.to_query_string()
    assert "bar" not in rendered and "_format" not in rendered
    assert rendered == ("_sort=-date,_id&_count=20&_total=accurate&_summary=count&_elements=id,subject"
                        "&_include=DocumentReference:subject&_include=DocumentReference:author:Practitioner"
                        "&_include:iterate=Patient:organization&_revinclude=Provenance:target")


@pytest.mark.parametrize("pairs", [
    [("name:sounds", "x")], [("identifier:in", "http://vs")], [("identifier:below", "x")],
    [("identifier:above", "x")], [("gender:of-type", "a|b|c")], [("identifier:of-type", "a|b")],
    [("birthdate", "1985-13")], [("birthdate", "yesterday")], [("birthdate", "xx1985")],
    [("birthdate:exact", "1985")], [("gender:missing", "maybe")], [("name:", "x")],
    [("general-practitioner:Observation", "1")], [("general-practitioner:Nonsense", "1")],
    [("organization:Organization", "Patient/1")], [("_count", "-1")], [("_count", "ten")],
    [("_summary", "yes")], [("_total", "all")], [("_sort", "nosuch")], [("_include", "Patient")],
    [("_include", "Patient:name")], [("_include", "Organization:partof")], [("_include:deep", "Patient:organization")],
])
def test_rejected(pairs):
    with pytest.raises(SearchError) as e:
        parse("Patient", pairs)
    assert e.value.message and e.value.expression


def test_rejected_other_types():
    with pytest.raises(SearchError):
        parse("DocumentReference", [("relationship", "DocumentReference/1")])  # one component missing
    with pytest.raises(SearchError):
        parse("DocumentReference", [("relationship:missing", "true")])
    with pytest.raises(SearchError):
        parse("Observation", [("code", "x")])


def test_empty_values_are_ignored():
    q = parse("Patient", [("name", ""), ("family", ",")])
    assert q.clauses == [] and q.unknown == []


ESCAPABLE = st.text(alphabet=st.sampled_from(list("ab,|$\\ é+/:")), min_size=1, max_size=8)


def esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


@settings(max_examples=200, deadline=None)
@given(st.lists(ESCAPABLE, min_size=1, max_size=3), ESCAPABLE)
def test_escaped_values_round_trip(words, system):
    pairs = [("family", ",".join(esc(w) for w in words)),
             ("identifier", ",".join(f"{esc(system)}|{esc(w)}" for w in words))]
    q = parse("Patient", pairs)
    assert [v.text for v in q.clauses[0].values] == words
    assert [(v.system, v.code) for v in q.clauses[1].values] == [(system, w) for w in words]
    rendered = q.to_query_string()
    again = parse("Patient", parse_qsl(rendered, keep_blank_values=True))
    assert again.to_query_string() == rendered
    assert [c.values for c in again.clauses] == [c.values for c in q.clauses]


def test_render_keeps_modifiers_prefixes_and_chains():
    pairs = [("birthdate", "ge1985-01-01T00:00:00+01:00"), ("name:exact", "Hélène"), ("gender:missing", "false"),
             ("general-practitioner:Practitioner.name", "x"), ("_has:DocumentReference:subject:type", "a|b")]
    q = parse("Patient", pairs)
    assert q.to_query_string() == (
        "birthdate=ge1985-01-01T00:00:00%2B01:00&name:exact=H%C3%A9l%C3%A8ne&gender:missing=false"
        "&general-practitioner:Practitioner.name=x&_has:DocumentReference:subject:type=a|b")


# --- compiled filters ----------------------------------------------------------------------------

def test_equality_clauses_stay_top_level_for_pushdown():
    q = parse("DocumentReference", [("subject", "Patient/1"), ("type", "http://loinc.org|11488-4"),
                                    ("status", "current"), ("date", "ge2026")])
    f = compile(q, extra={"_del": False})
    assert f["_del"] is False and f["r_subject"] == "Patient/1"
    assert f["t_type"] == "http://loinc.org|11488-4" and f["t_status"] == "current"
    assert "$or" in f  # the date condition


def test_merge_moves_repeated_fields_to_and():
    assert merge([{"a": 1}, {"a": 2}, {"$and": [{"b": 1}]}]) == {"a": 1, "$and": [{"a": 2}, {"b": 1}]}


def test_token_filters():
    f = compile(parse("Patient", [("gender", "http://hl7.org/fhir/administrative-gender|")]))
    assert f == {"t_gender": {"$exists": True}}
    f = compile(parse("Patient", [("gender:not", "male,female")]))
    assert f == {"t_gender": {"$nin": ["male", "female"]}}
    f = compile(parse("Patient", [("_id", "a,b")]))
    assert f == {"_id": {"$in": ["a", "b"]}}
    f = compile(parse("Patient", [("identifier", "|x")]))
    assert f == {"t_identifier": "|x"}


def test_references_without_type():
    f = compile(parse("DocumentReference", [("subject", "123")]))
    assert f == {"r_subject": {"$in": ["Device/123", "Group/123", "Patient/123", "Practitioner/123"]}}
    f = compile(parse("AuditEvent", [("entity", "123")]))  # every type is a target: match the id
    assert f == {"r_entity": {"$regex": "^[A-Z][A-Za-z]+/123$"}}
    f = compile(parse("DocumentReference", [("subject", "http://me/fhir/Patient/1")]), base_url="http://me/fhir")
    assert f == {"r_subject": "Patient/1"}


def test_unresolved_chain_is_an_error():
    q = parse("DocumentReference", [("subject:Patient.name", "x")])
    with pytest.raises(KeyError):
        compile(q)
    assert compile(q, {q.clauses[0].key: ["Patient/1"]}) == {"r_subject": {"$in": ["Patient/1"]}}


def test_numbers_and_quantities():
    """No parameter of our types is a number or quantity; the compiler still follows #number."""
    num = SearchParam(code="n", type="number", base="X", expression="X.n", multiple=False)
    qty = SearchParam(code="q", type="quantity", base="X", expression="X.q", multiple=True)

    def clause(param, prefix, text, system=None, code=None):
        v, lo, hi = nz.number_range(text)
        if param.type == "number":
            return Clause(param.code, param, None, (NumberValue(prefix, text, v, lo, hi),))
        return Clause(param.code, param, None, (QuantityValue(prefix, text, v, lo, hi, system, code),))

    from fhir_server.search.mongo import compile_clause

    assert compile_clause(clause(num, "eq", "100")) == {"n_n": {"$gte": 99.5, "$lt": 100.5}}
    assert compile_clause(clause(num, "ne", "100")) == {"$or": [{"n_n": {"$lt": 99.5}}, {"n_n": {"$gte": 100.5}}]}
    assert compile_clause(clause(num, "gt", "100")) == {"n_n": {"$gt": 100.0}}
    assert compile_clause(clause(num, "ap", "100")) == {"n_n": {"$gte": 90.0, "$lte": 110.0}}
    assert compile_clause(clause(qty, "le", "5.4", "http://unitsofmeasure.org", "mg")) == {
        "q_q": {"$elemMatch": {"v": {"$lte": 5.4}, "s": "http://unitsofmeasure.org", "c": "mg"}}}


def test_last_updated_uses_the_storage_field():
    now = datetime(2026, 6, 1, tzinfo=UTC)
    f = compile(parse("Patient", [("_lastUpdated", "ge2026-01-01")]), now=now)
    assert f == {"_lu": {"$gte": d(2026, 1, 1)}}
    f = compile(parse("Patient", [("_lastUpdated", "ap2026-01-01")]), now=now)
    gap = (now - d(2026, 1, 1)) / 10
    assert f == {"_lu": {"$gt": d(2026, 1, 1) - gap - timedelta(milliseconds=1), "$lt": d(2026, 1, 2) + gap}}


def test_data_file_is_valid_json_with_sorted_keys():
    text = (ROOT / "fhir_server/data/search_parameters.json").read_text()
    data = json.loads(text)
    assert data["fhirVersion"] == "4.0.1"
    assert json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n" == text


def test_flatten_lifts_conjunction_fields_without_changing_meaning():
    from fhir_server.storage.repository import flatten

    assert flatten({"$and": [{"a": 1}, {"b": 2, "$or": [{"c": 3}, {"d": 4}]}]}) == {
        "a": 1, "b": 2, "$and": [{"$or": [{"c": 3}, {"d": 4}]}]}
    # a key present twice stays a conjunction of both conditions
    assert flatten({"$and": [{"a": 1}, {"a": {"$ne": 2}}]}) == {"a": 1, "$and": [{"a": {"$ne": 2}}]}
    assert flatten({"x": 1}) == {"x": 1}
    assert flatten({"$and": [{"$and": [{"a": 1}]}, {"b": 2}]}) == {"a": 1, "b": 2}
