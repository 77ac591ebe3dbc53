"""`Patient/{id}/$access-history` (issue 10 item 5): the patient reads who did what in their record,
when, why and with what outcome, in French or English, newest first and paged; break-glass and
refused attempts flagged; a document hidden from the patient shows no title. Expectations from the
DMP leaflet ("qui l'a consulté, quand et pour quoi faire") and R4 AuditEvent/Bundle."""

from __future__ import annotations

import re

import pytest

from tests.auth_helpers import add_client, backend_token, public_jwks, rsa_key, user_token
from tests.consent_world import FHIR
from tests.dmp import authorization, document
from tests.test_profiles import run_hapi

FLAGS = "urn:fhir-dmp:access-history"
REASON = "patient inconscient aux urgences"


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


@pytest.fixture(scope="module")
def story(w):
    """A fresh record where: Dr Org (of Clinique O) reads a titled report and a document hidden from
    the patient; Dr None is refused; Dr BTG breaks the glass and reads the report."""
    pid, token = w.fresh_patient()
    with w.client("operator") as op:
        assert op.post("/Consent", json=authorization(pid, [f"Organization/{w.org_o}"], actions=["read"]),
                       headers=FHIR).status_code == 201
        report = document(pid, author=w.pr("auth"), description="Compte rendu de consultation du 3 mars")
        report["type"]["coding"][0]["display"] = "Consultation note"
        doc = op.post("/DocumentReference", json=report, headers=FHIR).json()["id"]
        hidden = op.post("/DocumentReference", json=document(
            pid, author=w.pr("auth"), labels=["hidden-from-patient"], description="Annonce diagnostique"),
            headers=FHIR).json()["id"]
    with w.client("org") as c:
        assert c.get(f"/DocumentReference/{doc}").status_code == 200
        assert c.get(f"/DocumentReference/{hidden}").status_code == 200
    with w.client("none") as c:
        assert c.get(f"/DocumentReference/{doc}").status_code == 404
    btg = user_token(w.server, "app", "dr.btg", "openid fhirUser user/*.cruds", patient=pid,
                     purpose_of_use="BTG", btg_reason=REASON)["access_token"]
    with w.client(btg) as c:
        assert c.get(f"/DocumentReference/{doc}").status_code == 200
    return {"pid": pid, "token": token, "doc": doc, "hidden": hidden}


def _history(client, pid: str, **params) -> dict:
    r = client.get(f"/Patient/{pid}/$access-history", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _all(client, pid: str, **params) -> list[dict]:
    page = _history(client, pid, **params)
    out = [e["resource"] for e in page.get("entry", [])]
    while nxt := [link["url"] for link in page["link"] if link["relation"] == "next"]:
        r = client.get(nxt[0])
        assert r.status_code == 200, r.text
        page = r.json()
        out += [e["resource"] for e in page.get("entry", [])]
    return out


def _text(event: dict) -> str:
    return re.sub(r"<[^>]+>", "", event["text"]["div"])


def _tags(event: dict) -> set[str]:
    return {t["code"] for t in event.get("meta", {}).get("tag", []) if t["system"] == FLAGS}


def _about(event: dict, ref: str) -> bool:
    return any(x.get("what", {}).get("reference", "").startswith(ref + "/") or x.get("what", {}).get("reference") == ref
               for x in event.get("entity", []))


def test_the_patient_reads_who_did_what_when_and_why_newest_first(w, story):
    with w.client(story["token"]) as c:
        events = _all(c, story["pid"], _count="3")
    recorded = [e["recorded"] for e in events]
    assert recorded == sorted(recorded, reverse=True)
    assert len({e["id"] for e in events}) == len(events)  # paging neither repeats nor skips
    reads = [e for e in events if e["subtype"][0].get("code") == "read" and _about(e, f"DocumentReference/{story['doc']}")]
    by_org = [e for e in reads if "Clinique O" in _text(e)]
    assert len(by_org) == 1
    line = _text(by_org[0])
    assert "Dr Org" in line and "a consulté" in line and "Compte rendu de consultation du 3 mars" in line, line
    assert "Consultation note" in line and "réussi" in line, line
    agent = next(a for a in by_org[0]["agent"] if a.get("requestor"))
    assert agent["name"] == "Dr Org" and agent["who"]["reference"] == w.pr("org")
    assert agent["who"]["identifier"]["system"] in ("urn:oid:1.2.250.1.71.4.2.1", "https://rpps.esante.gouv.fr")
    assert by_org[0]["language"] == "fr" and not _tags(by_org[0])


def test_break_glass_and_refusals_are_flagged_with_the_reason(w, story):
    with w.client(story["token"]) as c:
        events = _all(c, story["pid"], _count="100")
    declared = [e for e in events if e["type"]["code"] == "110113"]
    assert len(declared) == 1 and "break-glass" in _tags(declared[0])
    assert REASON in _text(declared[0]) and "Dr Btg" in _text(declared[0])
    btg_reads = [e for e in events if e["subtype"][0].get("code") == "read" and "Dr Btg" in _text(e)]
    assert len(btg_reads) == 1 and "break-glass" in _tags(btg_reads[0])
    assert "urgence (bris de glace)" in _text(btg_reads[0]) and REASON in _text(btg_reads[0])
    refused = [e for e in events if "Dr None" in _text(e)]
    assert len(refused) == 1 and _tags(refused[0]) == {"refused"} and "refusé" in _text(refused[0])
    ok = [e for e in events if "Dr Org" in _text(e)]
    assert ok and all(not _tags(e) for e in ok)


def test_a_document_hidden_from_the_patient_shows_no_title(w, story):
    with w.client(story["token"]) as c:
        events = _all(c, story["pid"], _count="100")
    hidden = [e for e in events if _about(e, f"DocumentReference/{story['hidden']}")]
    assert hidden
    for e in hidden:
        assert "Annonce diagnostique" not in str(e)
    assert any("un document qui ne vous est pas encore accessible" in _text(e) for e in hidden)
    with w.client("operator") as op:  # an auditor sees what it was
        seen = _all(op, story["pid"], _count="100", _lang="en")
    assert any("Annonce diagnostique" in _text(e) for e in seen)


def test_english_by_parameter_or_accept_language(w, story):
    with w.client(story["token"]) as c:
        for params, headers in (({"_lang": "en"}, {}), ({}, {"Accept-Language": "de, en-GB;q=0.8, fr;q=0.5"})):
            r = c.get(f"/Patient/{story['pid']}/$access-history", params={"_count": "100", **params},
                      headers=headers)
            assert r.status_code == 200
            events = [e["resource"] for e in r.json()["entry"]]
            assert r.json()["language"] == "en" and all(e["language"] == "en" for e in events)
            line = next(_text(e) for e in events if "Clinique O" in _text(e))
            assert "viewed" in line and "succeeded" in line, line
        r = c.get(f"/Patient/{story['pid']}/$access-history", params={"_lang": "de"})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_who_may_ask(w, story):
    pid = story["pid"]
    with w.client("org") as c:  # a professional authorized on the record: not the access history
        r = c.get(f"/Patient/{pid}/$access-history")
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    with w.client("alice") as c:  # another patient: as if the record did not exist
        r = c.get(f"/Patient/{pid}/$access-history")
        assert r.status_code == 404 and pid not in r.text.replace(f"Patient/{pid}", "")
        assert c.get(f"/Patient/{w.a}/$access-history").status_code == 200  # her own: yes
    key = rsa_key()
    add_client(w.server, "auditor", "confidential-asymmetric", "system/AuditEvent.rs", redirect_uris=(),
               jwks=public_jwks(key), operator=True)  # an audit service: an operator with one narrow scope
    token = backend_token(w.server, "auditor", key, "system/AuditEvent.rs")["access_token"]
    with w.client(token) as c:  # an audit client: every event, names only where its scopes reach
        events = _all(c, pid, _count="100")
        assert any(e["type"]["code"] == "110113" for e in events)
        assert not any("Dr Org" in _text(e) for e in events)  # cannot read the directory


def test_paging_links_are_sealed_and_bound_to_the_caller(w, story):
    with w.client(story["token"]) as c:
        page = _history(c, story["pid"], _count="1")
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert "_cursor=" in nxt and "recorded" not in nxt
    with w.client("operator") as op:
        r = op.get(nxt)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_the_answer_is_valid_fhir_for_hapi(w, story):
    with w.client(story["token"]) as c:
        bundle = _history(c, story["pid"], _count="20")
    [result] = run_hapi([{"id": "history", "profile": "http://hl7.org/fhir/StructureDefinition/Bundle",
                          "resource": bundle}]).values()
    errors = [m for m in result["issues"] if m["severity"] in ("error", "fatal")]
    assert result["valid"], errors
