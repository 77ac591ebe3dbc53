"""Emergency access (break-glass): a professional allowed to declare it asks for purpose of use BTG
with a reason at authorization time (the server's `purpose_of_use` parameter, published in
.well-known/smart-configuration); the token reaches that one patient's record for a bounded time
even without authorization, unless the patient refused emergency access, blocked the professional,
or the record is closed. The declaration is traced in the patient's record before the token exists.
"""

from __future__ import annotations

import httpx
import pytest

from tests.auth_helpers import (
    ASSERTION,
    add_client,
    assertion,
    authorize_params,
    browser_login,
    pkce,
    public_jwks,
    rsa_key,
    user_token,
)
from tests.dmp import document

FHIR = {"Content-Type": "application/fhir+json"}
SCOPE = "openid fhirUser user/*.cruds offline_access"


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


def _btg_token(w, user: str, patient: str, reason: str = "unconscious patient, emergency department") -> dict:
    return user_token(w.server, "app", user, SCOPE, patient=patient, purpose_of_use="BTG", btg_reason=reason)


def test_discovery_publishes_the_purpose_of_use_parameter(w):
    conf = httpx.get(w.server.fhir_base + "/.well-known/smart-configuration").json()
    assert conf["purpose_of_use_parameter"]["name"] == "purpose_of_use"
    assert conf["purpose_of_use_parameter"]["values"] == ["BTG"]


def test_break_glass_reads_one_record_for_a_bounded_time_and_tells_the_patient(w):
    pid, token = w.fresh_patient()
    with w.client("operator") as op:
        doc = op.post("/DocumentReference", json=document(pid), headers=FHIR).json()["id"]
    with w.client("btg") as c:
        assert c.get(f"/DocumentReference/{doc}").status_code == 404  # not authorized
    tok = _btg_token(w, "dr.btg", pid)
    assert "refresh_token" not in tok and tok["expires_in"] <= 4 * 3600 and tok["patient"] == pid
    with w.client(tok["access_token"]) as c:
        assert c.get(f"/DocumentReference/{doc}").status_code == 200
        assert doc in c.get("/DocumentReference", params={"patient": pid}).text
        assert c.get(f"/DocumentReference/{w.doc_a}").status_code == 404  # another patient: nothing more
        assert c.post("/DocumentReference", json=document(pid), headers=FHIR).status_code == 403  # read only
    with w.client(token) as c:  # the patient sees who broke the glass, when and why
        events = c.get("/AuditEvent", params={"patient": pid}).json()["entry"]
        declared = [e["resource"] for e in events if e["resource"]["type"]["code"] == "110113"]
        assert len(declared) == 1 and declared[0]["subtype"][0]["code"] == "110127"
        assert declared[0]["agent"][0]["who"]["reference"] == w.pr("btg")
        assert declared[0]["purposeOfEvent"][0]["text"] == "unconscious patient, emergency department"
        # each access made with the emergency token is audited with its purpose and reason (BALP)
        reads = [e["resource"] for e in events if e["resource"]["type"]["code"] == "rest"
                 and e["resource"]["subtype"][0]["code"] == "read"
                 and any(x["what"].get("reference", "").startswith(f"DocumentReference/{doc}/_history/")
                         for x in e["resource"]["entity"])]
        assert len(reads) == 1
        user = reads[0]["agent"][0]
        assert user["who"]["reference"] == w.pr("btg") and user["requestor"] is True
        assert user["purposeOfUse"][0]["coding"][0]["code"] == "BTG"
        assert user["purposeOfUse"][0]["text"] == "unconscious patient, emergency department"


@pytest.mark.parametrize("case", ["refused", "blocked", "closed"])
def test_break_glass_gives_nothing_where_the_patient_said_no(w, case):
    if case == "refused":
        patient, user, doc = w.b, "dr.btg", w.doc_b  # Bob refused emergency access
    elif case == "blocked":
        patient, user, doc = w.a, "dr.blocked", w.doc_a  # Alice blocked Dr Blocked
    else:
        patient, user, doc = w.d, "dr.btg", w.doc_d  # Dan's record is closed
    tok = _btg_token(w, user, patient)
    with w.client(tok["access_token"]) as c:
        assert c.get(f"/DocumentReference/{doc}").status_code == 404
        assert "entry" not in c.get("/DocumentReference", params={"patient": patient}).json()


def test_only_professionals_allowed_to_declare_break_glass(w):
    for user in ("dr.none", "alice"):
        _, challenge = pkce()
        q = browser_login(w.server, authorize_params(w.server, "app", SCOPE, challenge, purpose_of_use="BTG",
                                                     btg_reason="emergency"), user, patient=w.b)
        assert q["error"] == "access_denied", (user, q)
    # a reason is required
    _, challenge = pkce()
    r = httpx.get(w.server.base + "/auth/authorize", params=authorize_params(
        w.server, "app", SCOPE, challenge, purpose_of_use="BTG"), follow_redirects=False)
    assert r.status_code == 302 and "error=invalid_request" in r.headers["location"]
    # a backend client cannot
    token_url = w.server.base + "/auth/token"
    key = rsa_key()
    add_client(w.server, "btg-backend", "confidential-asymmetric", "system/*.rs", redirect_uris=(),
               jwks=public_jwks(key))
    r = httpx.post(token_url, data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                    "purpose_of_use": "BTG", "client_assertion_type": ASSERTION,
                                    "client_assertion": assertion("btg-backend", key, token_url)})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
