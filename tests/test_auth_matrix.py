"""The permission matrix: (scope set × interaction × resource type × whose record) → permit/deny,
against a real server enforcing SMART scopes. Every cell's expectation comes from `expected`, a
plain restatement of the SMART v2 rules, not from the server's code — plus patient consent where
the principal is a professional (Dr Martin is authorized by P1 only; tests/auth_world.py)."""

from __future__ import annotations

import json

import pytest

from tests.auth_helpers import backend_token, fhir_client, user_token

# name -> (how to get the token, type -> permission letters, patient restriction, granular category)
# Consent: which owners' records a professional may reach (None: not bound by consent).
CONSENTED = {"practitioner-user": {"p1"}, "practitioner-picked": {"p1"}}
RECORD_TYPES = ("DocumentReference", "Patient", "Consent", "Binary")
LOINC = "http://loinc.org"
ALL_TYPES = ("DocumentReference", "Patient", "Consent", "Binary", "Practitioner")
PRINCIPALS = {
    "patient-v2-rs": ("helene", "launch/patient patient/*.rs", {t: "rs" for t in ALL_TYPES}, "p1", None),
    "patient-v1-docs": ("helene", "launch/patient patient/DocumentReference.read",
                        {"DocumentReference": "rs"}, "p1", None),
    "patient-granular": ("helene", f"launch/patient patient/DocumentReference.rs?category={LOINC}|18842-5",
                         {"DocumentReference": "rs"}, "p1", "18842-5"),
    "patient-user-scopes": ("jerome", "user/*.rs", {t: "rs" for t in ALL_TYPES}, "p2", None),
    "practitioner-user": ("dr.martin", "user/*.rs", {t: "rs" for t in ALL_TYPES}, None, None),
    "practitioner-picked": ("dr.martin", "launch/patient patient/Patient.rs patient/DocumentReference.r",
                            {"Patient": "rs", "DocumentReference": "r"}, "p1", None),
    "system": ("backend-es", "system/*.rs", {t: "rs" for t in ALL_TYPES}, None, None),
}
RESOURCES = [  # (type, world attribute, owner attribute or None, category)
    ("DocumentReference", "doc_p1", "p1", "18842-5"),
    ("DocumentReference", "lab_p1", "p1", "11502-2"),
    ("DocumentReference", "doc_p2", "p2", "18842-5"),
    ("Patient", "p1", "p1", None),
    ("Patient", "p2", "p2", None),
    ("Consent", "consent_p1", "p1", None),
    ("Consent", "consent_p2", "p2", None),
    ("Binary", "bin_p1", "p1", None),
    ("Binary", "bin_p2", "p2", None),
    ("Practitioner", "pr1", None, None),
]
INSTANCE = ["read", "vread", "history-instance"]


@pytest.fixture(scope="module")
def tokens(auth_world):
    w = auth_world
    out = {}
    for name, (who, scope, *_rest) in PRINCIPALS.items():
        if who.startswith("backend"):
            out[name] = backend_token(w.server, who, w.keys[who], scope, alg="ES384")["access_token"]
        else:
            picked = getattr(w, _rest[1]) if who == "dr.martin" and _rest[1] else None
            tok = user_token(w.server, "app", who, scope, patient=picked)
            assert set(tok["scope"].split()) == set(scope.split()), (name, tok["scope"])
            out[name] = tok["access_token"]
    return out


def visible(w, principal, rtype, owner, category) -> bool:
    _, _, letters, restrict, granular = PRINCIPALS[principal]
    if restrict is not None and owner is not None and owner != restrict:
        return False
    if principal in CONSENTED and owner is not None and owner not in CONSENTED[principal]:
        return False
    return granular is None or category == granular


def expected(w, principal, interaction, rtype, owner, category) -> int:
    letters = PRINCIPALS[principal][2].get(rtype, "")
    needed = "s" if interaction in ("search-type", "history-type") else "r"
    if needed not in letters:
        return 403
    if interaction == "history-type":
        restricted = PRINCIPALS[principal][3] is not None or PRINCIPALS[principal][4] is not None or (
            principal in CONSENTED and rtype in RECORD_TYPES)
        return 403 if restricted else 200
    if interaction == "search-type":
        return 200
    return 200 if visible(w, principal, rtype, owner, category) else 404


def _request(c, interaction, rtype, rid):
    if interaction == "read":
        return c.get(f"/{rtype}/{rid}")
    if interaction == "vread":
        return c.get(f"/{rtype}/{rid}/_history/1")
    if interaction == "history-instance":
        return c.get(f"/{rtype}/{rid}/_history")
    raise AssertionError(interaction)


CELLS = [(p, i, r) for p in PRINCIPALS for i in INSTANCE for r in RESOURCES]


@pytest.mark.parametrize("principal,interaction,resource", CELLS,
                         ids=[f"{p}-{i}-{r[1]}" for p, i, r in CELLS])
def test_instance_cell(auth_world, tokens, principal, interaction, resource):
    w = auth_world
    rtype, attr, owner_attr, category = resource
    want = expected(w, principal, interaction, rtype, owner_attr, category)
    with fhir_client(w.server, tokens[principal]) as c:
        r = _request(c, interaction, rtype, getattr(w, attr))
    assert r.status_code == want, r.text
    if want >= 400:
        assert r.json()["resourceType"] == "OperationOutcome"
    if interaction == "history-instance" and want == 200:
        assert all(e.get("resource", {}).get("id") == getattr(w, attr) for e in r.json().get("entry", []))


TYPE_CELLS = [(p, i, t) for p in PRINCIPALS for i in ("search-type", "history-type") for t in ALL_TYPES]


@pytest.mark.parametrize("principal,interaction,rtype", TYPE_CELLS, ids=[f"{p}-{i}-{t}" for p, i, t in TYPE_CELLS])
def test_type_cell(auth_world, tokens, principal, interaction, rtype):
    w = auth_world
    want = expected(w, principal, interaction, rtype, None, None)
    with fhir_client(w.server, tokens[principal]) as c:
        r = c.get(f"/{rtype}" if interaction == "search-type" else f"/{rtype}/_history", params={"_count": 1000})
    assert r.status_code == want, r.text
    if want != 200:
        return
    bundle = r.json()
    got = {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e}
    mine = {getattr(w, attr) for t, attr, owner, cat in RESOURCES if t == rtype}
    allowed = {getattr(w, attr) for t, attr, owner, cat in RESOURCES
               if t == rtype and visible(w, principal, t, owner, cat)}
    assert got & mine == allowed  # other tests may add resources; ours are exactly the visible ones
    for e in bundle.get("entry", []):
        if "resource" not in e:
            continue  # a deletion in history (other tests share the world)
        res = e["resource"]
        restrict = PRINCIPALS[principal][3]
        if restrict and rtype in ("DocumentReference", "Consent"):
            ref = (res.get("subject") or res.get("patient"))["reference"]
            assert ref == f"Patient/{getattr(w, restrict)}"
    if interaction == "search-type" and rtype != "Binary":
        # the access decision is part of the query, so the total counts only what the caller may see
        assert bundle["total"] == len(bundle.get("entry", []))


def test_batch_entries_are_decided_one_by_one(auth_world, tokens):
    w = auth_world
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"DocumentReference/{w.doc_p1}"}},
        {"request": {"method": "GET", "url": f"DocumentReference/{w.doc_p2}"}},
        {"request": {"method": "GET", "url": f"Consent/{w.consent_p1}"}},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
    ]}
    with fhir_client(w.server, tokens["patient-v1-docs"]) as c:
        r = c.post("/", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["200", "404", "403", "403"]
    assert r.json()["entry"][0]["resource"]["id"] == w.doc_p1


# --- writes under patient-context scopes ---------------------------------------------------------

@pytest.fixture(scope="module")
def writer(auth_world):
    w = auth_world
    tok = user_token(w.server, "app", "dr.martin", "launch/patient patient/DocumentReference.cruds", patient=w.p1)
    with fhir_client(w.server, tok["access_token"]) as c:
        yield c


def _doc(patient):
    return {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{patient}"},
            "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}]}


FHIR = {"Content-Type": "application/fhir+json"}


def test_create_only_in_the_patient_in_context(auth_world, writer):
    w = auth_world
    assert writer.post("/DocumentReference", json=_doc(w.p1), headers=FHIR).status_code == 201
    r = writer.post("/DocumentReference", json=_doc(w.p2), headers=FHIR)
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"


def test_update_patch_delete_of_another_patients_record(auth_world, writer):
    w = auth_world
    other = {**_doc(w.p1), "id": w.doc_p2}  # would move P2's document into P1's record
    assert writer.put(f"/DocumentReference/{w.doc_p2}", json=other, headers=FHIR).status_code == 404
    patch = [{"op": "replace", "path": "/status", "value": "superseded"}]
    assert writer.patch(f"/DocumentReference/{w.doc_p2}", content=json.dumps(patch),
                        headers={"Content-Type": "application/json-patch+json"}).status_code == 404
    assert writer.delete(f"/DocumentReference/{w.doc_p2}").status_code == 404


def test_own_record_cannot_be_moved_to_another_patient(auth_world, writer):
    w = auth_world
    created = writer.post("/DocumentReference", json=_doc(w.p1), headers=FHIR).json()
    moved = {**created, "subject": {"reference": f"Patient/{w.p2}"}}
    assert writer.put(f"/DocumentReference/{created['id']}", json=moved, headers=FHIR).status_code == 403
    patch = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{w.p2}"}]
    assert writer.patch(f"/DocumentReference/{created['id']}", content=json.dumps(patch),
                        headers={"Content-Type": "application/json-patch+json"}).status_code == 403
    ok = [{"op": "replace", "path": "/status", "value": "superseded"}]
    assert writer.patch(f"/DocumentReference/{created['id']}", content=json.dumps(ok),
                        headers={"Content-Type": "application/json-patch+json"}).status_code == 200
    assert writer.delete(f"/DocumentReference/{created['id']}").status_code == 204


def test_read_only_scopes_cannot_write(auth_world, tokens):
    w = auth_world
    with fhir_client(w.server, tokens["patient-v2-rs"]) as c:
        assert c.post("/DocumentReference", json=_doc(w.p1), headers=FHIR).status_code == 403
        assert c.delete(f"/DocumentReference/{w.doc_p1}").status_code == 403


def test_raw_binary_read_respects_the_compartment(auth_world, tokens):
    w = auth_world
    with fhir_client(w.server, tokens["patient-v2-rs"]) as c:
        r = c.get(f"/Binary/{w.bin_p1}", headers={"Accept": "text/plain"})
        assert r.status_code == 200 and r.content == b"hello"
        assert c.get(f"/Binary/{w.bin_p2}", headers={"Accept": "text/plain"}).status_code == 404
