"""The patient's control over their record, rule by rule (issue "The patient decides"): who may add,
record lifecycle, authorizations a professional records, blocks and revocations that take effect at
once on every worker, masked and hidden documents, the personal space, administrators.

Each test works on patients of its own (tests/consent_world.py `fresh_patient`), so the shared
record of the matrix tests is never changed.
"""

from __future__ import annotations

import httpx
import pytest

from tests.dmp import authorization, block, document, record_consent

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


def _post(w, who, resource) -> httpx.Response:
    with w.client(who) as c:
        return c.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)


def _get(w, who, path) -> httpx.Response:
    # a new connection per request: with two workers, consecutive requests land on either
    return httpx.get(w.server.fhir_base + path, headers={"Authorization": f"Bearer {w.tokens.get(who, who)}",
                                                         "Accept": "application/fhir+json"}, timeout=60)


def _unlabelled(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "meta"}


def test_who_may_add_to_a_record(w):
    pid, alice_like = w.fresh_patient()
    for who, actions in (("auth", ()), ("readonly", ("read",))):
        assert _post(w, "operator", authorization(pid, [w.pr(who)], actions=actions)).status_code == 201
    assert _post(w, "operator", authorization(pid, [f"Organization/{w.org_o}"], actions=["read"])).status_code == 201
    expected = {"auth": 201, "operator": 201, "readonly": 403, "org-o": 403, "org": 403, "none": 403,
                "org-p": 403, "admin": 403}
    for who, status in expected.items():
        r = _post(w, who, document(pid))
        assert r.status_code == status, (who, r.text)
    # the patient adds documents of her own only
    mine = document(pid, author=f"Patient/{pid}", patient_authored=True)
    assert _post(w, alice_like, mine).status_code == 201
    assert _post(w, alice_like, document(pid, author=w.pr("auth"))).status_code == 403
    assert _post(w, alice_like, document(pid, author=f"Patient/{pid}")).status_code == 403  # not her personal space


def test_records_need_an_existing_patient_and_an_open_record(w):
    carol, _ = w.fresh_patient(record=False, user=False)
    assert _post(w, "operator", authorization(carol, [w.pr("auth")])).status_code == 201
    # no record-creation consent: no professional document, even an authorized one
    r = _post(w, "auth", document(carol, author=w.pr("auth")))
    assert r.status_code == 403 and "record" in r.json()["issue"][0]["diagnostics"]
    # a subject that does not exist: 400, for everyone (the operator included)
    r = _post(w, "operator", document("no-such-patient"))
    assert r.status_code == 400 and "does not exist" in r.text
    # the professional records the patient's agreement to open the record: then they are authorized by it
    assert _post(w, "none", record_consent(carol, performer=w.pr("none"))).status_code == 201
    doc = _post(w, "none", document(carol, author=w.pr("none")))
    assert doc.status_code == 201, doc.text
    assert _get(w, "none", f"/DocumentReference/{doc.json()['id']}").status_code == 200
    assert _get(w, "readonly", f"/DocumentReference/{doc.json()['id']}").status_code == 404


def test_a_closed_record_denies_professionals_and_writes(w):
    pid, token = w.fresh_patient()
    assert _post(w, "operator", authorization(pid, [w.pr("auth")])).status_code == 201
    doc = _post(w, "auth", document(pid, author=w.pr("auth"))).json()["id"]
    assert _get(w, "auth", f"/DocumentReference/{doc}").status_code == 200
    with w.client("operator") as op:
        rec = op.get("/Consent", params={"patient": pid, "_count": 100}).json()
        record = next(e["resource"] for e in rec["entry"] if e["resource"]["policy"][0]["uri"].endswith(":record"))
        assert op.put(f"/Consent/{record['id']}", json={**record, "status": "inactive"},
                      headers=FHIR).status_code == 200
    assert _get(w, "auth", f"/DocumentReference/{doc}").status_code == 404
    assert _post(w, "auth", document(pid, author=w.pr("auth"))).status_code == 403
    # the patient still reads her record, but adds nothing to a closed one
    assert _get(w, token, f"/DocumentReference/{doc}").status_code == 200
    assert _post(w, token, document(pid, author=f"Patient/{pid}", patient_authored=True)).status_code == 403


def test_block_and_revocation_take_effect_on_the_next_request_on_every_worker(w):
    pid, token = w.fresh_patient()
    permit = _post(w, token, authorization(pid, [w.pr("readonly")], actions=["read"])).json()
    doc = _post(w, "operator", document(pid)).json()["id"]
    for _ in range(6):
        assert _get(w, "readonly", f"/DocumentReference/{doc}").status_code == 200
    blocked = _post(w, token, block(pid, w.pr("readonly"))).json()
    for _ in range(6):  # each on a new connection: both workers answer some of them
        assert _get(w, "readonly", f"/DocumentReference/{doc}").status_code == 404
        assert "entry" not in _get(w, "readonly", f"/DocumentReference?patient={pid}").json()
    # a permit recorded after the block does not lift it; only the patient does
    assert _post(w, token, authorization(pid, [w.pr("readonly")], actions=["read"])).status_code == 201
    assert _get(w, "readonly", f"/DocumentReference/{doc}").status_code == 404
    with w.client("readonly") as c:
        assert c.put(f"/Consent/{blocked['id']}", json={**blocked, "status": "inactive"},
                     headers=FHIR).status_code in (403, 404)
    with w.client(token) as c:
        assert c.put(f"/Consent/{blocked['id']}", json={**blocked, "status": "inactive"},
                     headers=FHIR).status_code == 200
        for _ in range(4):
            assert _get(w, "readonly", f"/DocumentReference/{doc}").status_code == 200
        # revoking: every permit inactive
        for consent in c.get("/Consent", params={"patient": pid, "_count": 100}).json()["entry"]:
            res = consent["resource"]
            if res["policy"][0]["uri"].endswith(":authorization") and res["status"] == "active":
                assert c.put(f"/Consent/{res['id']}", json={**res, "status": "inactive"},
                             headers=FHIR).status_code == 200
    for _ in range(6):
        assert _get(w, "readonly", f"/DocumentReference/{doc}").status_code == 404
    assert permit["id"]


def test_professionals_record_only_their_own_authorization(w):
    pid, token = w.fresh_patient()
    own = authorization(pid, [w.pr("none")], origin="professional")
    assert _post(w, "none", authorization(pid, [w.pr("none")])).status_code == 403  # not marked as theirs
    assert _post(w, "none", authorization(pid, [w.pr("auth")], origin="professional")).status_code == 403
    assert _post(w, "none", authorization(pid, [w.pr("none")], kind="deny", origin="professional")).status_code == 403
    assert _post(w, "none", own).status_code == 201
    doc = _post(w, "operator", document(pid)).json()["id"]
    assert _get(w, "none", f"/DocumentReference/{doc}").status_code == 200
    # always visible to the patient, who can revoke it
    with w.client(token) as c:
        mine = [e["resource"] for e in c.get("/Consent", params={"patient": pid}).json()["entry"]]
        recorded = [m for m in mine if m.get("meta", {}).get("tag", [{}])[0].get("code") == "professional"]
        assert len(recorded) == 1
    # a blocked professional cannot record a new one
    assert _post(w, token, block(pid, w.pr("readonly"))).status_code == 201
    r = _post(w, "readonly", authorization(pid, [w.pr("readonly")], origin="professional"))
    assert r.status_code == 403 and "blocked" in r.text


def test_masked_documents(w):
    pid, token = w.fresh_patient(gp=w.pr("gp"))
    for who in ("auth", "gp", "author"):
        assert _post(w, "operator", authorization(pid, [w.pr(who)])).status_code == 201
    pdf = _post(w, "author", {"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0=",
                             "securityContext": {"reference": f"Patient/{pid}"}}).json()["id"]
    doc = _post(w, "author", document(pid, author=w.pr("author"),
                                      content=[{"attachment": {"contentType": "application/pdf",
                                                               "url": f"Binary/{pdf}"}}])).json()
    with w.client(token) as c:
        masked = {**doc, "meta": {"security": [{"system": "urn:fhir-dmp:security", "code": "masked"}]}}
        r = c.put(f"/DocumentReference/{doc['id']}", json=masked, headers=FHIR)
        assert r.status_code == 200, r.text
        assert r.json()["meta"]["versionId"] == "2"  # each change is a versioned write
    assert _get(w, "auth", f"/DocumentReference/{doc['id']}").status_code == 404
    assert doc["id"] not in _get(w, "auth", f"/DocumentReference?patient={pid}").text
    assert _get(w, "gp", f"/DocumentReference/{doc['id']}").status_code == 200
    assert _get(w, "author", f"/DocumentReference/{doc['id']}").status_code == 200
    # the content follows its document: masked too, and readable by the same people only
    assert _get(w, token, f"/Binary/{pdf}").json()["meta"]["security"] == [
        {"system": "urn:fhir-dmp:security", "code": "masked"}]
    assert _get(w, "auth", f"/Binary/{pdf}").status_code == 404
    assert pdf not in _get(w, "auth", f"/Binary?securitycontext=Patient/{pid}").text
    assert _get(w, "gp", f"/Binary/{pdf}").status_code == 200
    assert _get(w, "author", f"/Binary/{pdf}").status_code == 200
    assert pdf in _get(w, "author", f"/Binary?securitycontext=Patient/{pid}").text
    # only the patient unmasks
    with w.client("author") as c:
        current = c.get(f"/DocumentReference/{doc['id']}").json()
        assert c.put(f"/DocumentReference/{doc['id']}", json=_unlabelled(current),
                     headers=FHIR).status_code == 403
    with w.client(token) as c:
        current = c.get(f"/DocumentReference/{doc['id']}").json()
        # she may not change a professional's document otherwise, nor delete it
        assert c.put(f"/DocumentReference/{doc['id']}", json={**current, "description": "mine now"},
                     headers=FHIR).status_code == 403
        assert c.delete(f"/DocumentReference/{doc['id']}").status_code == 403
        assert c.put(f"/DocumentReference/{doc['id']}", json=_unlabelled(current), headers=FHIR).status_code == 200
    assert _get(w, "auth", f"/DocumentReference/{doc['id']}").status_code == 200
    assert _get(w, "auth", f"/Binary/{pdf}").status_code == 200


def test_documents_hidden_from_the_patient_until_announced(w):
    pid, token = w.fresh_patient()
    assert _post(w, "operator", authorization(pid, [w.pr("auth")])).status_code == 201
    pdf = _post(w, "auth", {"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0=",
                           "securityContext": {"reference": f"Patient/{pid}"}}).json()["id"]
    hidden = document(pid, author=w.pr("auth"), labels=["hidden-from-patient"],
                      content=[{"attachment": {"contentType": "application/pdf", "url": f"Binary/{pdf}"}}])
    doc = _post(w, "auth", hidden).json()
    assert _get(w, token, f"/DocumentReference/{doc['id']}").status_code == 404
    assert _get(w, token, f"/Binary/{pdf}").status_code == 404  # nor its content
    assert doc["id"] not in _get(w, token, "/DocumentReference").text
    with w.client("auth") as c:  # the announcement consultation took place: the mark is lifted
        assert c.put(f"/DocumentReference/{doc['id']}", json=_unlabelled(doc), headers=FHIR).status_code == 200
    assert _get(w, token, f"/DocumentReference/{doc['id']}").status_code == 200
    assert _get(w, token, f"/Binary/{pdf}").status_code == 200


def test_personal_space(w):
    pid, token = w.fresh_patient()
    assert _post(w, "operator", authorization(pid, [w.pr("auth")])).status_code == 201
    mine = _post(w, token, document(pid, author=f"Patient/{pid}", patient_authored=True)).json()
    seen = _get(w, "auth", f"/DocumentReference/{mine['id']}").json()
    assert {"system": "urn:fhir-dmp:document-category", "code": "patient-authored"} in seen["category"][0]["coding"]
    with w.client("auth") as c:
        assert c.put(f"/DocumentReference/{mine['id']}", json={**seen, "description": "x"},
                     headers=FHIR).status_code == 403
        assert c.delete(f"/DocumentReference/{mine['id']}").status_code == 403
    with w.client(token) as c:
        assert c.put(f"/DocumentReference/{mine['id']}", json={**seen, "description": "my notes"},
                     headers=FHIR).status_code == 200
        assert c.delete(f"/DocumentReference/{mine['id']}").status_code == 204


def test_administrators_manage_consents_not_clinical_data(w):
    pid, _ = w.fresh_patient(user=False)
    consent = authorization(pid, [w.pr("auth")])
    assert _post(w, "admin", consent).status_code == 403  # not marked as recorded by an administrator
    assert _post(w, "admin", authorization(pid, [w.pr("auth")], origin="administrator")).status_code == 201
    assert _get(w, "admin", f"/Patient/{pid}").status_code == 200
    assert _get(w, "admin", f"/DocumentReference?patient={pid}").status_code == 403
    assert _post(w, "admin", document(pid)).status_code == 403


def test_backend_client_acts_for_its_organization(w):
    pid, token = w.fresh_patient()
    doc = _post(w, "operator", document(pid)).json()["id"]
    assert _get(w, "org-o", f"/DocumentReference/{doc}").status_code == 404
    assert _post(w, token, authorization(pid, [f"Organization/{w.org_o}"])).status_code == 201
    assert _get(w, "org-o", f"/DocumentReference/{doc}").status_code == 200
    assert _get(w, "org", f"/DocumentReference/{doc}").status_code == 200  # its professionals too
    assert _get(w, "org-p", f"/DocumentReference/{doc}").status_code == 404
    assert _post(w, "org-o", document(pid)).status_code == 201
    assert _post(w, token, block(pid, f"Organization/{w.org_o}")).status_code == 201
    assert _get(w, "org-o", f"/DocumentReference/{doc}").status_code == 404
    assert _get(w, "org", f"/DocumentReference/{doc}").status_code == 404


def test_consents_must_follow_the_published_shape(w):
    pid, token = w.fresh_patient()
    bad = [
        authorization(pid),  # a permit names who it permits
        authorization(pid, kind="deny"),  # a deny without actors is only the refusal of emergency access
        {**authorization(pid, [w.pr("auth")]), "policy": [{"uri": "urn:other"}]},
        {**authorization(pid, [w.pr("auth")]),
         "provision": {"type": "permit", "provision": [{"type": "deny"}],
                       "actor": authorization(pid, [w.pr("auth")])["provision"]["actor"]}},
    ]
    for consent in bad:
        r = _post(w, token, consent)
        assert r.status_code == 422, (consent, r.text)
        assert r.json()["issue"][0]["expression"]


@pytest.mark.parametrize("mode", ["database", "off"])
def test_revocation_is_seen_by_every_worker_in_the_other_cache_modes(ferretdb_uri, mode):
    """The consent world runs with FHIR_CONSENT_CACHE=host (shared memory); several servers on one
    cluster use `database` (a counter read per request), and `off` reads consents every time."""
    from tests.auth_helpers import add_client, add_user, backend_token, fhir_client, public_jwks, rsa_key, user_token
    from tests.conftest import start_server, stop_server
    from tests.helpers import new_ins

    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_WORKERS": "2",
                                    "FHIR_CONSENT_CACHE": mode})
    try:
        key = rsa_key()
        add_client(s, "op", "confidential-asymmetric", "system/*.cruds", redirect_uris=(), jwks=public_jwks(key),
                   operator=True)
        add_client(s, "app", "public", "openid fhirUser user/*.cruds")
        with fhir_client(s, backend_token(s, "op", key, "system/*.cruds")["access_token"]) as op:
            pr = op.post("/Practitioner", json={"resourceType": "Practitioner"}, headers=FHIR).json()["id"]
            pid = op.post("/Patient", json={"resourceType": "Patient", "identifier": [
                {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": new_ins()}]}, headers=FHIR).json()["id"]
            assert op.post("/Consent", json=record_consent(pid), headers=FHIR).status_code == 201
            permit = op.post("/Consent", json=authorization(pid, [f"Practitioner/{pr}"]), headers=FHIR).json()
            doc = op.post("/DocumentReference", json=document(pid), headers=FHIR).json()["id"]
            add_user(s, "dr", "practitioner", f"Practitioner/{pr}", rpps="10000000009")
            token = user_token(s, "app", "dr", "openid fhirUser user/*.cruds")["access_token"]

            def status() -> int:
                return httpx.get(f"{s.fhir_base}/DocumentReference/{doc}", timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}).status_code

            assert [status() for _ in range(6)] == [200] * 6
            assert op.put(f"/Consent/{permit['id']}", json={**permit, "status": "inactive"},
                          headers=FHIR).status_code == 200
            assert [status() for _ in range(6)] == [404] * 6
    finally:
        stop_server(s)


def test_professional_accounts_are_linked_by_rpps(w):
    """A practitioner account acts as the directory's Practitioner carrying its RPPS number; an
    account naming another Practitioner than its RPPS's is refused at sign-in."""
    from tests.auth_helpers import PASSWORD, add_user, authorize_params, pkce, user_token
    from tests.consent_world import _luhn_fix

    rpps = _luhn_fix("1000999888")
    assert _post(w, "operator", {"resourceType": "Practitioner", "identifier": [
        {"system": "https://rpps.esante.gouv.fr", "value": rpps}]}).status_code == 201
    with w.client("operator") as op:
        pr = op.get("/Practitioner", params={"identifier": f"https://rpps.esante.gouv.fr|{rpps}"}).json()
        pr_id = pr["entry"][0]["resource"]["id"]
    pid, _ = w.fresh_patient(user=False)
    assert _post(w, "operator", authorization(pid, [f"Practitioner/{pr_id}"])).status_code == 201
    doc = _post(w, "operator", document(pid)).json()["id"]
    add_user(w.server, "dr.linked", "practitioner", None, rpps=rpps)  # no --fhir-user: found by RPPS
    token = user_token(w.server, "app", "dr.linked", "openid fhirUser user/*.rs")["access_token"]
    assert _get(w, token, f"/DocumentReference/{doc}").status_code == 200
    # an account whose Practitioner is not the one carrying its RPPS cannot sign in
    add_user(w.server, "dr.mislinked", "practitioner", w.pr("auth"), rpps=rpps)
    _, challenge = pkce()
    with httpx.Client(base_url=w.server.base, timeout=60) as browser:
        r = browser.get("/auth/authorize", params=authorize_params(w.server, "app", "openid user/*.rs", challenge))
        rid = r.text.split('name="rid" value="', 1)[1].split('"', 1)[0]
        r = browser.post("/auth/login", data={"rid": rid, "username": "dr.mislinked", "password": PASSWORD})
        assert r.status_code == 403 and "RPPS" in r.text


def test_a_professional_cannot_file_a_record_into_another_patients_compartment(w):
    """Authorized by Alice-like patient A, a professional writes A's document naming patient B as its
    author: B's compartment (and so B's own token) would receive A's data. Refused."""
    a, _ = w.fresh_patient(user=False)
    b, b_token = w.fresh_patient()
    assert _post(w, "operator", authorization(a, [w.pr("auth")])).status_code == 201
    r = _post(w, "auth", document(a, author=f"Patient/{b}"))
    assert r.status_code == 403 and "other patients" in r.text
    assert _post(w, "auth", document(a, author=w.pr("auth"))).status_code == 201  # the control
    assert "entry" not in _get(w, b_token, "/DocumentReference").json()


def test_large_content_keeps_its_bytes_when_its_document_is_masked(w):
    """Content over the inline limit lives in GridFS: the masked label's new Binary version keeps it."""
    pid, token = w.fresh_patient(gp=w.pr("gp"))
    assert _post(w, "operator", authorization(pid, [w.pr("gp")])).status_code == 201
    data = bytes(range(256)) * 64  # 16 KiB, above the test servers' inline limit
    with w.client("operator") as op:
        pdf = op.post("/Binary", content=data, headers={"Content-Type": "application/pdf",
                                                         "X-Security-Context": f"Patient/{pid}"}).json()["id"]
        doc = op.post("/DocumentReference", json=document(pid, content=[
            {"attachment": {"contentType": "application/pdf", "url": f"Binary/{pdf}"}}]), headers=FHIR).json()
    with w.client(token) as c:
        masked = {**doc, "meta": {"security": [{"system": "urn:fhir-dmp:security", "code": "masked"}]}}
        assert c.put(f"/DocumentReference/{doc['id']}", json=masked, headers=FHIR).status_code == 200
    with w.client("gp") as c:
        raw = c.get(f"/Binary/{pdf}", headers={"Accept": "application/pdf"})
        assert raw.status_code == 200 and raw.content == data
        assert c.get(f"/Binary/{pdf}").json()["meta"]["versionId"] == "2"
