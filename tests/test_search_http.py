"""Search over HTTP: https://hl7.org/fhir/R4/search.html (semantics are property-tested in
tests/test_search_engine.py; here: the REST layer, paging, includes, chains, links and errors)."""

import uuid

import pytest

from tests.helpers import JSON_HEADERS, assert_outcome, create


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _ids(bundle) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _walk(client, url, params=None) -> tuple[list[dict], int]:
    bundle = client.get(url, params=params).json()
    entries, pages = [], 0
    while True:
        pages += 1
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", bundle
        entries += [e for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return entries, pages
        assert pages < 2000
        bundle = client.get(nxt[0]).json()


def _batch_create(client, resources: list[dict]) -> list[dict]:
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]}
    out = client.post("", json=bundle, headers=JSON_HEADERS).json()
    assert all(e["response"]["status"] == "201" for e in out["entry"]), out
    return [e["resource"] for e in out["entry"]]


@pytest.fixture(scope="module")
def world(fhir):
    """A small French record: two patients, an organization, documents."""
    t = _tag()
    org = create(fhir, {"resourceType": "Organization", "name": f"CHU Lyon {t}",
                        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2", "value": f"69{t}"}]})
    helene = create(fhir, {"resourceType": "Patient", "name": [{"family": f"Dupont{t}", "given": ["Hélène"]}],
                           "identifier": [{"system": "urn:test:ipp", "value": f"H{t}"}],
                           "gender": "female", "birthDate": "1985-02-03",
                           "managingOrganization": {"reference": f"Organization/{org['id']}"}})
    jerome = create(fhir, {"resourceType": "Patient", "name": [{"family": f"Dupont{t}", "given": ["Jérôme"]}],
                           "identifier": [{"system": "urn:test:ipp", "value": f"J{t}"}],
                           "gender": "male", "birthDate": "1990"})
    docs = []
    for i, (pat, code, date) in enumerate([(helene, "11488-4", "2026-01-10T10:00:00+01:00"),
                                           (helene, "18842-5", "2026-03-01T08:00:00Z"),
                                           (jerome, "11488-4", "2025-12-31T23:30:00-05:00")]):
        docs.append(create(fhir, {
            "resourceType": "DocumentReference", "status": "current", "date": date,
            "type": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pat['id']}"},
            "description": f"doc{i} {t}",
            "content": [{"attachment": {"contentType": "application/pdf", "url": f"Binary/b{i}"}}]}))
    return {"t": t, "org": org, "helene": helene, "jerome": jerome, "docs": docs}


def test_string_search_is_case_and_accent_insensitive(fhir, world):
    t = world["t"]
    assert _ids(fhir.get("/Patient", params={"given": "helene", "family": f"dupont{t}"}).json()) == [world["helene"]["id"]]
    both = fhir.get("/Patient", params={"family": f"DUPONT{t}"}).json()
    assert sorted(_ids(both)) == sorted([world["helene"]["id"], world["jerome"]["id"]])
    assert both["total"] == 2
    assert _ids(fhir.get("/Patient", params={"given:exact": "helene", "family": f"dupont{t}"}).json()) == []
    assert _ids(fhir.get("/Patient", params={"given:exact": "Hélène", "family": f"dupont{t}"}).json()) == [
        world["helene"]["id"]]


def test_token_and_date_search(fhir, world):
    t = world["t"]
    h = world["helene"]["id"]
    assert _ids(fhir.get("/Patient", params={"identifier": f"urn:test:ipp|H{t}"}).json()) == [h]
    assert _ids(fhir.get("/Patient", params={"identifier": f"H{t}"}).json()) == [h]
    assert _ids(fhir.get("/Patient", params={"identifier": f"|H{t}"}).json()) == []
    assert _ids(fhir.get("/Patient", params={"family": f"dupont{t}", "birthdate": "1985"}).json()) == [h]
    assert _ids(fhir.get("/Patient", params={"family": f"dupont{t}", "birthdate": "ge1986"}).json()) == [
        world["jerome"]["id"]]
    docs = fhir.get("/DocumentReference", params={"subject": f"Patient/{h}", "date": "ge2026-01-01",
                                                  "_sort": "-date"}).json()
    assert _ids(docs) == [world["docs"][1]["id"], world["docs"][0]["id"]]
    # 2025-12-31T23:30-05:00 is 2026-01-01T04:30Z: in 2026 when compared in UTC
    jd = fhir.get("/DocumentReference", params={"subject": f"Patient/{world['jerome']['id']}",
                                                "date": "ge2026-01-01T00:00:00Z"}).json()
    assert _ids(jd) == [world["docs"][2]["id"]]


def test_unknown_params_ignored_and_left_out_of_self_link_unless_strict(fhir, world):
    t = world["t"]
    r = fhir.get("/Patient", params={"family": f"dupont{t}", "colour": "blue"}).json()
    assert len(_ids(r)) == 2
    self_link = [link["url"] for link in r["link"] if link["relation"] == "self"][0]
    assert "colour" not in self_link and f"family=dupont{t}" in self_link
    strict = fhir.get("/Patient", params={"family": f"dupont{t}", "colour": "blue"},
                      headers={"Prefer": "handling=strict"})
    assert_outcome(strict, 400, "not-supported")
    unknown_include = fhir.get("/Patient", params={"family": f"dupont{t}", "_include": "Patient:nope"},
                               headers={"Prefer": "handling=strict"})
    assert_outcome(unknown_include, 400)


@pytest.mark.parametrize("params", [
    {"family:exactly": "x"}, {"birthdate": "1985-13-45"}, {"birthdate": "xx1985"}, {"_count": "-1"},
    {"_sort": "nonsense"}, {"gender:contains": "f"}, {"_summary": "maybe"}, {"_include": "Patient:birthdate"},
])
def test_malformed_search_is_400(fhir, params):
    assert_outcome(fhir.get("/Patient", params=params), 400)


def test_chaining_and_has(fhir, world):
    t = world["t"]
    h = world["helene"]["id"]
    one_level = fhir.get("/DocumentReference", params={
        "subject:Patient.identifier": f"urn:test:ipp|H{t}"}).json()
    assert sorted(_ids(one_level)) == sorted([world["docs"][0]["id"], world["docs"][1]["id"]])
    two_levels = fhir.get("/DocumentReference", params={"subject:Patient.organization.name": f"CHU Lyon {t}"}).json()
    assert sorted(_ids(two_levels)) == sorted([world["docs"][0]["id"], world["docs"][1]["id"]])
    has = fhir.get("/Patient", params={"_has:DocumentReference:subject:type": "http://loinc.org|18842-5",
                                       "family": f"dupont{t}"}).json()
    assert _ids(has) == [h]


def test_include_and_revinclude(fhir, world):
    t = world["t"]
    h = world["helene"]["id"]
    r = fhir.get("/DocumentReference", params={"description": f"doc0 {t}",
                                               "_include": "DocumentReference:subject"}).json()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in r["entry"]}
    assert modes == {("DocumentReference", "match"), ("Patient", "include")}
    rev = fhir.get("/Patient", params={"_id": h, "_revinclude": "DocumentReference:subject"}).json()
    included = sorted(e["resource"]["id"] for e in rev["entry"] if e["search"]["mode"] == "include")
    assert included == sorted([world["docs"][0]["id"], world["docs"][1]["id"]])
    it = fhir.get("/DocumentReference", params={"description": f"doc0 {t}", "_include": "DocumentReference:subject",
                                                "_include:iterate": "Patient:organization"}).json()
    assert world["org"]["id"] in {e["resource"]["id"] for e in it["entry"]}
    self_link = [link["url"] for link in it["link"] if link["relation"] == "self"][0]
    assert "_include:iterate=Patient:organization" in self_link


def test_compartment_search(fhir, world):
    h = world["helene"]["id"]
    r = fhir.get(f"/Patient/{h}/DocumentReference").json()
    assert sorted(_ids(r)) == sorted([world["docs"][0]["id"], world["docs"][1]["id"]])
    typed = fhir.get(f"/Patient/{h}/DocumentReference", params={"type": "http://loinc.org|18842-5"}).json()
    assert _ids(typed) == [world["docs"][1]["id"]]
    assert [link["url"] for link in r["link"] if link["relation"] == "self"][0].split("?")[0].endswith(
        f"/Patient/{h}/DocumentReference")


def test_post_search_with_form_body(fhir, world):
    r = fhir.post("/Patient/_search", content=f"family=dupont{world['t']}&gender=female",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and _ids(r.json()) == [world["helene"]["id"]]


def test_summary_elements_total(fhir, world):
    t = world["t"]
    count = fhir.get("/Patient", params={"family": f"dupont{t}", "_summary": "count"}).json()
    assert count["total"] == 2 and "entry" not in count
    none = fhir.get("/Patient", params={"family": f"dupont{t}", "_total": "none"}).json()
    assert "total" not in none and len(_ids(none)) == 2
    el = fhir.get("/Patient", params={"family": f"dupont{t}", "_elements": "birthDate"}).json()
    for e in el["entry"]:
        assert set(e["resource"]) == {"resourceType", "id", "meta", "birthDate"}
        assert any(tag["code"] == "SUBSETTED" for tag in e["resource"]["meta"]["tag"])
    summary = fhir.get("/DocumentReference", params={"description": f"doc0 {t}", "_summary": "true"}).json()
    assert "description" in summary["entry"][0]["resource"] and "content" in summary["entry"][0]["resource"]


def test_missing_and_not(fhir, world):
    t = world["t"]
    r = fhir.get("/Patient", params={"family": f"dupont{t}", "organization:missing": "true"}).json()
    assert _ids(r) == [world["jerome"]["id"]]
    n = fhir.get("/Patient", params={"family": f"dupont{t}", "gender:not": "female"}).json()
    assert _ids(n) == [world["jerome"]["id"]]


def test_paging_through_1000_matches_while_inserting(fhir):
    t = _tag()
    created = []
    for _ in range(10):
        created += _batch_create(fhir, [{"resourceType": "List", "status": "current", "mode": "working",
                                         "title": f"page{t}"} for _ in range(100)])
    expected = {r["id"] for r in created}
    first = fhir.get("/List", params={"title": f"page{t}", "_count": "37", "_sort": "-_lastUpdated"}).json()
    assert first["total"] == 1000
    seen = [e["resource"]["id"] for e in first["entry"]]
    nxt = [link["url"] for link in first["link"] if link["relation"] == "next"]
    inserted = set()
    while nxt:
        # concurrent inserts of new matches between pages must not duplicate or skip older ones
        inserted |= {r["id"] for r in _batch_create(fhir, [{"resourceType": "List", "status": "current",
                                                            "mode": "working", "title": f"page{t}"}])}
        page = fhir.get(nxt[0]).json()
        assert "_count=37" in nxt[0] and f"title=page{t}" in nxt[0]
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
    assert len(seen) == len(set(seen))
    assert expected <= set(seen)
    assert set(seen) <= expected | inserted


def test_paging_with_sort_on_multivalued_field(fhir):
    t = _tag()
    _batch_create(fhir, [{"resourceType": "Patient", "name": [{"family": f"Zed{t}", "given": [g1, g2]}]}
                         for g1, g2 in [("b", "y"), ("a", "z"), ("c", "x"), ("a", "a"), ("m", "n")] * 3])
    for sort in ("given", "-given"):
        entries, pages = _walk(fhir, "/Patient", {"family": f"zed{t}", "_sort": sort, "_count": "2"})
        assert len(entries) == 15 and pages == 8
        assert len({e["resource"]["id"] for e in entries}) == 15
        keys = [min(e["resource"]["name"][0]["given"]) if sort == "given" else max(e["resource"]["name"][0]["given"])
                for e in entries]
        assert keys == sorted(keys, reverse=sort.startswith("-"))


def test_search_in_batch_bundle(fhir, world):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient?family=dupont{world['t']}&gender=male"}}]}
    out = fhir.post("", json=bundle, headers=JSON_HEADERS).json()
    assert out["entry"][0]["response"]["status"] == "200"
    assert _ids(out["entry"][0]["resource"]) == [world["jerome"]["id"]]


def test_bad_cursor_is_400(fhir):
    assert_outcome(fhir.get("/Patient", params={"_cursor": "garbage"}), 400)
