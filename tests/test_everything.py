"""`Patient/{id}/$everything` against a brute-force oracle: every resource of the server, read by an
operator service, kept when it names the patient the way R4's Patient CompartmentDefinition says
(plus Binary.securityContext and the patient a recorded Provenance names), minus what the caller
may not see under the record's rules."""

from __future__ import annotations

import pytest

from tests.dmp import authorization, document

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT_EXTENSION = "urn:fhir-dmp:StructureDefinition/provenance-patient"
COMPARTMENT = {  # type -> the elements that put a resource in a patient's compartment (R4 + Binary)
    "Patient": lambda r, ref: r["id"] == ref.split("/")[1] or any(link["other"].get("reference") == ref
                                                                  for link in r.get("link", [])),
    "DocumentReference": lambda r, ref: r.get("subject", {}).get("reference") == ref
    or any(a.get("reference") == ref for a in r.get("author", [])),
    "Consent": lambda r, ref: r.get("patient", {}).get("reference") == ref,
    "Binary": lambda r, ref: r.get("securityContext", {}).get("reference") == ref,
    "List": lambda r, ref: r.get("subject", {}).get("reference") == ref or r.get("source", {}).get("reference") == ref,
    # the server's own audit trail grows with every request of this test (the walks included): left out
    "AuditEvent": lambda r, ref: not _trail(r) and (
        any(a.get("who", {}).get("reference") == ref for a in r.get("agent", []))
        or any(e.get("what", {}).get("reference") == ref for e in r.get("entity", []))),
    # R4: a Patient target; and the patient a recorded Provenance names (records/provenance.py, R5's patient)
    "Provenance": lambda r, ref: any(t.get("reference") == ref for t in r.get("target", [])) or any(
        e.get("url") == PATIENT_EXTENSION and e.get("valueReference", {}).get("reference") == ref
        for e in r.get("extension", [])),
}


def _trail(r: dict) -> bool:
    """An AuditEvent the server wrote for a REST interaction (records/audit.py) or a sign-in or token
    (auth/audit.py: DICOM 110114 User Authentication)."""
    return r.get("resourceType") == "AuditEvent" and r.get("type", {}).get("code") in ("rest", "110114")


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


@pytest.fixture(scope="module")
def record(w):
    pid, token = w.fresh_patient(gp=w.pr("gp"))
    with w.client("operator") as op:
        def post(resource):
            r = op.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
            assert r.status_code == 201, r.text
            return r.json()["id"]

        post(authorization(pid, [w.pr("auth")]))
        post(authorization(pid, [w.pr("gp")]))
        ids = {"plain": post(document(pid, author=w.pr("auth"))),
               "masked": post(document(pid, author=w.pr("author"), labels=["masked"])),
               "hidden": post(document(pid, author=w.pr("auth"), labels=["hidden-from-patient"])),
               "binary": post({"resourceType": "Binary", "contentType": "text/plain", "data": "aGk=",
                               "securityContext": {"reference": f"Patient/{pid}"}})}
        post(document(pid, author=w.pr("auth"), description="another"))
    return pid, token, ids


def _provenances_of(w, pid: str) -> dict[str, set[str]]:
    """Type/id -> the Provenances of its versions (for the operator, who sees them all)."""
    out: dict[str, set[str]] = {}
    with w.client("operator") as op:
        bundle = op.get("/Provenance", params={"patient": pid, "_count": "1000"}).json()
    for e in bundle.get("entry", []):
        for t in e["resource"]["target"]:
            out.setdefault(t["reference"].split("/_history/")[0], set()).add(f"Provenance/{e['resource']['id']}")
    return out


def _oracle(w, pid: str) -> set[str]:
    ref, out = f"Patient/{pid}", set()
    with w.client("operator") as op:
        for rtype, member in COMPARTMENT.items():
            url = f"/{rtype}?_count=1000"
            while url:
                bundle = op.get(url).json()
                out |= {f"{rtype}/{e['resource']['id']}" for e in bundle.get("entry", []) if member(e["resource"], ref)}
                nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
                url = nxt[0].split("/fhir", 1)[1] if nxt else None
    return out


def _walk(w, who: str, pid: str, **params) -> tuple[list[str], set[str], int]:
    matches, included, pages = [], set(), 0
    with w.client(who) as c:
        r = c.get(f"/Patient/{pid}/$everything", params=params)
        while True:
            assert r.status_code == 200, r.text
            bundle = r.json()
            pages += 1
            for e in bundle.get("entry", []):
                if _trail(e["resource"]):
                    continue
                key = f"{e['resource']['resourceType']}/{e['resource']['id']}"
                (matches.append if e["search"]["mode"] == "match" else included.add)(key)
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not nxt:
                return matches, included, pages
            r = c.get(nxt[0].split("/fhir", 1)[1])


def test_everything_is_the_compartment_minus_what_the_caller_may_not_see(w, record):
    pid, token, ids = record
    oracle = _oracle(w, pid)
    assert {f"DocumentReference/{ids[k]}" for k in ("plain", "masked", "hidden")} <= oracle
    about = _provenances_of(w, pid)  # a Provenance is seen by those who see what it describes
    hidden = {f"DocumentReference/{ids['hidden']}"} | about[f"DocumentReference/{ids['hidden']}"]
    masked = {f"DocumentReference/{ids['masked']}"} | about[f"DocumentReference/{ids['masked']}"]
    mine, inc, pages = _walk(w, token, pid, _count=2)
    assert len(mine) == len(set(mine)) and pages >= len(mine) // 2  # stable pages, nothing twice
    assert set(mine) == oracle - hidden  # hidden from her until announced
    assert w.pr("gp") in inc  # the resources it references come along
    theirs, _, _ = _walk(w, "auth", pid, _count=3)
    assert set(theirs) == oracle - masked  # masked: not their document, nor who wrote it
    gp, _, _ = _walk(w, "gp", pid)
    assert set(gp) == oracle  # the general practitioner sees masked documents too
    with w.client("none") as c:  # no authorization: not even the Patient
        assert c.get(f"/Patient/{pid}/$everything").status_code == 404


def test_everything_type_since_and_cursors(w, record):
    pid, token, ids = record
    docs, _, _ = _walk(w, token, pid, _type="DocumentReference,Binary")
    assert docs and all(d.split("/")[0] in ("DocumentReference", "Binary") for d in docs)
    assert f"Binary/{ids['binary']}" in docs
    assert _walk(w, token, pid, _since="2099-01-01T00:00:00Z")[0] == []
    with w.client(token) as c:
        assert c.get(f"/Patient/{pid}/$everything", params={"_type": "Nope"}).status_code == 400
        assert c.get(f"/Patient/{pid}/$everything", params={"_since": "yesterday"}).status_code == 400
        nxt = next(link["url"] for link in c.get(f"/Patient/{pid}/$everything", params={"_count": 1}).json()["link"]
                   if link["relation"] == "next")
    with w.client("auth") as c:  # a cursor is bound to the caller who received it
        assert c.get(nxt.split("/fhir", 1)[1]).status_code == 400
