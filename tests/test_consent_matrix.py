"""The authorization matrix of patient consent: actor × resource of Alice's record × path to data.

Expectations come from `RULES`, a declarative restatement of the record's rules (issue "The patient
decides", README "Patient control"), not from the server's code:

* the record holder sees her record, except what a professional marked hidden from her;
* another patient sees nothing of it;
* a professional (or an organization's backend client) sees it only while an authorization of
  the open record names them (or their organization) and no block does; masked documents only if
  they wrote them or are her general practitioner;
* an administrator sees the Patient and Consent resources, never clinical data (403);
* an operator service sees everything.

Every path to data is tried (read, vread, instance history, search by patient, cross-patient
search, compartment search, `_revinclude`, chain, `_has`, batch entry, totals); for a deny, nothing
of the resource leaks (no id in any entry, totals exact).
"""

from __future__ import annotations

import pytest

from tests.helpers import new_ins

FHIR = {"Content-Type": "application/fhir+json"}

# Alice's resources: world attribute -> (type, kind)
RESOURCES = {
    "doc_a": ("DocumentReference", "document"),
    "masked_a": ("DocumentReference", "masked"),
    "hidden_a": ("DocumentReference", "hidden"),
    "own_a": ("DocumentReference", "patient-authored"),
    "bin_a": ("Binary", "content"),
    "a": ("Patient", "patient"),
    "c_auth": ("Consent", "consent"),
}
AUTHORIZED = {"auth", "gp", "author", "readonly", "org", "org-o"}
RULES = {
    # actor: kinds of Alice's resources they may read ("*" = all)
    "alice": {"document", "masked", "patient-authored", "content", "patient", "consent"},
    "bob": set(),
    "operator": {"*"},
    "admin": {"patient", "consent"},
    "gp": {"document", "masked", "hidden", "patient-authored", "content", "patient", "consent"},  # her GP
    "author": {"document", "masked", "hidden", "patient-authored", "content", "patient", "consent"},  # wrote it
    **{who: {"document", "hidden", "patient-authored", "content", "patient", "consent"}
       for who in AUTHORIZED - {"gp", "author"}},
    **{who: set() for who in ("none", "blocked", "expired", "revoked", "btg", "org-p")},
}
CLINICAL = {"DocumentReference", "Binary"}


def may_read(actor: str, kind: str) -> bool:
    allowed = RULES[actor]
    return "*" in allowed or kind in allowed


def read_status(actor: str, rtype: str, kind: str) -> int:
    if actor == "admin" and rtype in CLINICAL:
        return 403  # administrators: no clinical data at all (the type is refused)
    return 200 if may_read(actor, kind) else 404


def _ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e}


ACTORS = sorted(RULES)


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


@pytest.mark.parametrize("actor", ACTORS)
def test_read_vread_history(w, actor):
    with w.client(actor) as c:
        for attr, (rtype, kind) in RESOURCES.items():
            rid = getattr(w, attr)
            want = read_status(actor, rtype, kind)
            for path in (f"/{rtype}/{rid}", f"/{rtype}/{rid}/_history/1", f"/{rtype}/{rid}/_history",
                         f"/{rtype}/{rid}/$validate"):
                r = c.get(path)
                assert r.status_code == want, (actor, attr, path, r.text)
                if want != 200:
                    assert w.ins["alice"] not in r.text and "Alice" not in r.text


@pytest.mark.parametrize("actor", ACTORS)
def test_searches_see_exactly_what_may_be_read(w, actor):
    docs = {attr: getattr(w, attr) for attr, (rtype, _) in RESOURCES.items() if rtype == "DocumentReference"}
    visible = {rid for attr, rid in docs.items() if may_read(actor, RESOURCES[attr][1])}
    hidden = set(docs.values()) - visible
    with w.client(actor) as c:
        if actor == "admin":
            assert c.get("/DocumentReference", params={"patient": w.a}).status_code == 403
            return
        searches = {
            "by patient": ("/DocumentReference", {"patient": w.a, "_count": 100}),
            "by subject": ("/DocumentReference", {"subject": f"Patient/{w.a}", "_count": 100}),
            "cross-patient": ("/DocumentReference", {"_count": 1000}),
            "compartment": (f"/Patient/{w.a}/DocumentReference", {"_count": 100}),
            "chain": ("/DocumentReference", {"subject.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{w.ins['alice']}"}),
            "revinclude": ("/Patient", {"_id": w.a, "_revinclude": "DocumentReference:subject"}),
            "post": ("/DocumentReference/_search", None),
        }
        for name, (path, params) in searches.items():
            if params is None:
                r = c.post(path, data={"patient": w.a})
            else:
                r = c.get(path, params=params)
            assert r.status_code == 200, (actor, name, r.text)
            got = _ids(r.json())
            if name == "chain" and not may_read(actor, "patient"):
                assert not got & set(docs.values()), (actor, name)  # the chain cannot resolve an unseen patient
                continue
            if name == "revinclude" and not may_read(actor, "patient"):
                assert got == set(), (actor, name)
                continue
            assert got & set(docs.values()) == visible, (actor, name, got, visible)
            assert not got & hidden
        # totals are exact: counted through the same filter
        r = c.get("/DocumentReference", params={"patient": w.a, "_total": "accurate", "_count": 1})
        bundle = r.json()
        full = c.get("/DocumentReference", params={"patient": w.a, "_count": 1000}).json()
        assert bundle["total"] == len(full.get("entry", [])), actor
        if not visible:
            assert bundle["total"] == 0 and "entry" not in bundle


@pytest.mark.parametrize("actor", ACTORS)
def test_has_and_batch_paths(w, actor):
    with w.client(actor) as c:
        # _has: Alice is returned only if the caller sees both Alice and the document named inside
        for attr in ("doc_a", "masked_a"):
            r = c.get("/Patient", params={"_id": w.a, "_has:DocumentReference:subject:_id": getattr(w, attr)})
            if actor == "admin":
                assert r.status_code == 403  # the _has target type is clinical
                continue
            want = {w.a} if may_read(actor, "patient") and may_read(actor, RESOURCES[attr][1]) else set()
            assert _ids(r.json()) == want, (actor, attr)
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"{rtype}/{getattr(w, attr)}"}} for attr, (rtype, _) in RESOURCES.items()]}
        r = c.post("", json=batch, headers=FHIR)
        assert r.status_code == 200, r.text
        for (attr, (rtype, kind)), entry in zip(RESOURCES.items(), r.json()["entry"]):
            assert entry["response"]["status"].startswith(str(read_status(actor, rtype, kind))), (actor, attr, entry)


def test_unauthorized_professional_learns_nothing_by_ins(w):
    """Patient?identifier=INS: the record's existence at most, never demographics."""
    with w.client("none") as c:
        r = c.get("/Patient", params={"identifier": f"urn:oid:1.2.250.1.213.1.4.10|{w.ins['alice']}",
                                      "_total": "accurate"})
        assert r.status_code == 200
        body = r.json()
        assert body["total"] == 0 and not [e for e in body.get("entry", []) if e["search"]["mode"] == "match"]
        assert "Alice" not in r.text and w.a not in r.text
        notices = [e["resource"] for e in body.get("entry", []) if e["search"]["mode"] == "outcome"]
        assert len(notices) == 1 and "authorization" in notices[0]["issue"][0]["diagnostics"]
        # an INS nobody holds: no notice (the existence answer is true, not a constant)
        r = c.get("/Patient", params={"identifier": f"urn:oid:1.2.250.1.213.1.4.10|{new_ins()}"})
        assert "entry" not in r.json()
    with w.client("alice") as c:  # the holder herself gets her record, and no notice
        r = c.get("/Patient", params={"identifier": f"urn:oid:1.2.250.1.213.1.4.10|{w.ins['alice']}"})
        assert [e["search"]["mode"] for e in r.json()["entry"]] == ["match"]


# --- named regressions for leaks peer servers shipped --------------------------------------------

def test_has_criteria_are_filtered_too_hapi_6065(w):
    """HAPI FHIR issue 6065: authorization applied to results but not to `_has` criteria. Dr Auth
    sees Alice but not the masked document: `_has` on it must not reveal that it exists."""
    with w.client("auth") as c:
        r = c.get("/Patient", params={"_id": w.a, "_has:DocumentReference:subject:_id": w.masked_a})
        assert _ids(r.json()) == set()
        r = c.get("/Patient", params={"_id": w.a, "_has:DocumentReference:subject:_id": w.doc_a})
        assert _ids(r.json()) == {w.a}  # the control


def test_include_does_not_leak_another_compartment_ms_5683(w):
    """Microsoft FHIR server PR 5683: compartment leak through _include. Dr GP sees Alice's record,
    not Bob's: a document of Alice that names Bob must not bring Bob's Patient along."""
    with w.client("operator") as op:
        doc = op.post("/DocumentReference", json={
            "resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{w.a}"},
            "author": [{"reference": f"Patient/{w.b}"}],
            "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}]}, headers=FHIR).json()
    with w.client("gp") as c:
        r = c.get(f"/Patient/{w.a}/DocumentReference", params={"_id": doc["id"], "_include": "DocumentReference:author"})
        assert _ids(r.json()) == {doc["id"]}  # the document (which names Bob), never Bob's Patient
        r = c.get("/DocumentReference", params={"_id": doc["id"], "_include": "DocumentReference:author:Patient"})
        assert _ids(r.json()) == {doc["id"]}


def test_paging_and_totals_stay_exact_under_consent_hapi_6549(w):
    """HAPI FHIR issue 6549: consent filtering broke paging and totals. Across every patient Dr Auth
    may see (Alice and Bob), pages of one are full, the total is exact and nothing else appears."""
    with w.client("operator") as op:
        everything = _ids(op.get("/DocumentReference", params={"_count": 1000}).json())
    with w.client("auth") as c:
        seen, url, totals = [], "/DocumentReference?_count=1&_total=accurate", set()
        while url:
            bundle = c.get(url).json()
            totals.add(bundle["total"])
            ids = [e["resource"]["id"] for e in bundle.get("entry", [])]
            assert len(ids) == 1 or not ids and not seen
            seen += ids
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            url = nxt[0].split("/fhir", 1)[1] if nxt else None
        assert totals == {len(seen)} and len(seen) == len(set(seen))
        assert {w.doc_a, w.hidden_a, w.own_a, w.doc_b} <= set(seen) and w.masked_a not in seen
        assert w.doc_d not in seen  # Dan's record is closed and never authorized Dr Auth
        assert set(seen) <= everything
        for rid in seen:
            assert c.get(f"/DocumentReference/{rid}").status_code == 200


def test_paging_links_are_bound_to_the_caller(w):
    with w.client("auth") as c:
        bundle = c.get("/DocumentReference", params={"patient": w.a, "_count": 1}).json()
        nxt = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    with w.client("none") as other:
        r = other.get(nxt.split("/fhir", 1)[1])
        assert r.status_code == 400 and w.a not in r.text.replace(f"patient={w.a}", "")


# --- the patient asks why ------------------------------------------------------------------------

def _explain(c, patient, actor, **params):
    r = c.get(f"/Patient/{patient}/$explain-access", params={"actor": actor, **params})
    if r.status_code != 200:
        return r.status_code, None
    out: dict = {}
    for p in r.json()["parameter"]:
        value = next(v for k, v in p.items() if k.startswith("value"))
        out.setdefault(p["name"], []).append(value["reference"] if isinstance(value, dict) else value)
    return 200, out


def test_explain_access(w):
    pr = w.pr
    with w.client("alice") as c:
        _, ans = _explain(c, w.a, pr("auth"))
        assert ans["allowed"] == [True] and {"reference": f"Consent/{w.c_auth}"}["reference"] in ans["basis"]
        _, ans = _explain(c, w.a, pr("blocked"))
        assert ans["allowed"] == [False] and "blocked" in ans["reason"][0] and f"Consent/{w.c_block}" in ans["basis"]
        _, ans = _explain(c, w.a, pr("none"))
        assert ans["allowed"] == [False] and ans["basis"] == ["policy:deny-except-btg"]
        _, ans = _explain(c, w.a, pr("expired"))
        assert ans["allowed"] == [False]
        _, ans = _explain(c, w.a, pr("auth"), resource=f"DocumentReference/{w.masked_a}")
        assert ans["allowed"] == [False] and ans["basis"] == ["label:masked"]
        _, ans = _explain(c, w.a, pr("gp"), resource=f"DocumentReference/{w.masked_a}")
        assert ans["allowed"] == [True] and "general practitioner" in ans["reason"][0]
        _, ans = _explain(c, w.a, pr("org"))  # through the organization their role belongs to
        assert ans["allowed"] == [True] and f"Organization/{w.org_o}" in ans["actorIdentity"]
        _, ans = _explain(c, w.a, f"Organization/{w.org_o}", action="add")
        assert ans["allowed"] == [False]  # Organization O may read, not add
        _, ans = _explain(c, w.a, pr("readonly"), action="add")
        assert ans["allowed"] == [False]
        assert _explain(c, w.b, pr("auth"))[0] == 404  # Bob's record is not hers to ask about
        assert _explain(c, w.a, "Patient/x")[0] == 400
    with w.client("auth") as c:
        assert _explain(c, w.a, pr("auth"))[0] == 403  # professionals do not query the patient's rules
    with w.client("admin") as c:
        assert _explain(c, w.a, pr("auth"))[1]["allowed"] == [True]
    # the explanation agrees with enforcement, for every professional of the world
    for who in ("auth", "gp", "author", "readonly", "org", "none", "blocked", "expired", "revoked", "btg"):
        with w.client("alice") as c:
            _, ans = _explain(c, w.a, pr(who), resource=f"DocumentReference/{w.doc_a}")
        with w.client(who) as c:
            seen = c.get(f"/DocumentReference/{w.doc_a}").status_code == 200
        assert ans["allowed"] == [seen], who
