"""No leak through search paths: _include, _revinclude, chains, _has, compartments, totals and
paging links all go through the same access decision (issue: SMART scope enforcement)."""

from __future__ import annotations

import pytest

from tests.auth_helpers import fhir_client
from tests.test_auth_matrix import tokens  # noqa: F401  (module-scoped fixture)


def _entries(bundle, mode=None):
    return [e["resource"] for e in bundle.get("entry", []) if mode is None or e["search"]["mode"] == mode]


def _owner(resource) -> str | None:
    if resource["resourceType"] == "Patient":
        return resource["id"]
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    return ref.split("/", 1)[1] if ref.startswith("Patient/") else None


@pytest.fixture(scope="module")
def helene(auth_world, tokens):  # noqa: F811
    with fhir_client(auth_world.server, tokens["patient-v2-rs"]) as c:
        yield c


def test_include_and_revinclude_stay_in_the_compartment(auth_world, helene):
    w = auth_world
    inc = helene.get("/DocumentReference", params={"_include": "DocumentReference:subject"})
    assert inc.status_code == 200, inc.text
    owners = {_owner(r) for r in _entries(inc.json())}
    assert owners == {w.p1}
    rev = helene.get("/Patient", params={"_revinclude": "DocumentReference:subject"}).json()
    assert {r["id"] for r in _entries(rev, "match")} == {w.p1}
    assert {_owner(r) for r in _entries(rev, "include")} == {w.p1}
    # even naming the other patient explicitly brings nothing back
    other = helene.get("/DocumentReference", params={"subject": f"Patient/{w.p2}",
                                                     "_include": "DocumentReference:subject"}).json()
    assert _entries(other) == [] and other["total"] == 0


def test_chain_and_has_cannot_probe_other_patients(auth_world, helene):
    w = auth_world
    chained = helene.get("/DocumentReference", params={"subject:Patient.name": "Durand"}).json()
    assert _entries(chained) == []
    has = helene.get("/Patient", params={"_has:DocumentReference:subject:type": "http://loinc.org|18842-5"}).json()
    assert {r["id"] for r in _entries(has)} == {w.p1}


def test_totals_paging_and_compartments_only_count_visible(auth_world, helene):
    """Other tests may add P1 documents to the shared world: compare with what is visible, not a constant."""
    w = auth_world
    first = helene.get("/DocumentReference", params={"_count": "1"}).json()
    seen = [r for r in _entries(first)]
    nxt = [link["url"] for link in first["link"] if link["relation"] == "next"]
    while nxt:
        page = helene.get(nxt[0]).json()
        assert "total" in page and page["total"] == first["total"]
        seen += _entries(page)
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
    assert first["total"] == len(seen) == len({r["id"] for r in seen})
    assert {_owner(r) for r in seen} == {w.p1}
    assert {w.doc_p1, w.lab_p1} <= {r["id"] for r in seen} and w.doc_p2 not in {r["id"] for r in seen}
    assert _entries(helene.get(f"/Patient/{w.p2}/DocumentReference").json()) == []


def test_chain_into_a_type_the_token_cannot_search_is_403(auth_world, tokens):  # noqa: F811
    with fhir_client(auth_world.server, tokens["patient-v1-docs"]) as c:
        r = c.get("/DocumentReference", params={"subject:Patient.name": "Dupont"})
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
        inc = c.get("/DocumentReference", params={"_include": "DocumentReference:subject"}).json()
        assert {r["resourceType"] for r in _entries(inc)} == {"DocumentReference"}  # Patient not in scope


def test_granular_scope_filters_search_and_includes(auth_world, tokens):  # noqa: F811
    w = auth_world
    with fhir_client(auth_world.server, tokens["patient-granular"]) as c:
        r = c.get("/DocumentReference").json()
        assert [d["id"] for d in _entries(r)] == [w.doc_p1] and r["total"] == 1
        rev = c.get("/DocumentReference", params={"_id": w.lab_p1}).json()
        assert _entries(rev) == []


def test_search_without_search_permission_is_403(auth_world, tokens):  # noqa: F811
    with fhir_client(auth_world.server, tokens["practitioner-picked"]) as c:
        r = c.get("/DocumentReference")
        assert r.status_code == 403
