"""The authorization server's AuditEvents (issue 10, item 1), after IHE BALP/IUA: sign-in success
and failure (DICOM 110114 User Authentication / 110122 Login), token issuance and refresh and
backend tokens (110114 / ITI-71 Get Access Token, the token named by its jti), revocation (110114 /
110123 Logout); never a token, code, verifier or password in them; on the audit trail's hash chains
(`$verify` stays clean); and no token when the audit cannot be written (503)."""

from __future__ import annotations

import base64

import httpx
import orjson
import pytest
from pymongo import MongoClient

from fhir_server import composition
from tests.auth_helpers import (
    ASSERTION,
    PASSWORD,
    _hidden,
    add_client,
    add_user,
    assertion,
    authorize_params,
    pkce,
    public_jwks,
    rsa_key,
    user_token,
)
from tests.inprocess import InProcessServer
from tests.test_profiles import run_hapi

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCOPE = "launch/patient patient/*.rs offline_access"


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


def _stored(server) -> list[dict]:
    with MongoClient(server.mongodb_uri) as client:
        return [orjson.loads(d["_json"]) for d in client[server.database]["AuditEvent"].find({}, {"_json": 1})]


def _auth_events(server, subtype: str) -> list[dict]:
    return [e for e in _stored(server) if e["type"]["code"] == "110114" and e["subtype"][0]["code"] == subtype]


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


def _token_ids(event: dict) -> set[str]:
    return {x["what"]["identifier"]["value"] for x in event.get("entity", []) if x.get("role", {}).get("code") == "13"}


def _query(event: dict) -> str:
    [q] = [x for x in event["entity"] if x.get("role", {}).get("code") == "24"]
    return base64.b64decode(q["query"]).decode()


def _sign_in(server, username: str, password: str) -> httpx.Response:
    _, challenge = pkce()
    with httpx.Client(base_url=server.base, timeout=60) as browser:
        r = browser.get("/auth/authorize", params=authorize_params(server, "app", SCOPE, challenge))
        return browser.post("/auth/login", data={"rid": _hidden(r.text, "rid"), "username": username,
                                                 "password": password})


def test_sign_in_and_token_issuance_are_audited_without_secrets(w):
    pid, _ = w.fresh_patient(user=False)
    add_user(w.server, f"u-{pid}", "patient", f"Patient/{pid}")
    tok = user_token(w.server, "app", f"u-{pid}", SCOPE)
    logins = [e for e in _auth_events(w.server, "110122")
              if any(a["who"].get("reference") == f"Patient/{pid}" for a in e["agent"])]
    assert len(logins) == 1 and logins[0]["outcome"] == "0"
    [issued] = [e for e in _auth_events(w.server, "ITI-71") if _jti(tok["access_token"]) in _token_ids(e)]
    assert issued["outcome"] == "0" and issued["action"] == "E"
    assert {"reference": f"Patient/{pid}"} in [x.get("what") for x in issued["entity"]]  # in the patient record
    user = next(a for a in issued["agent"] if a.get("requestor"))
    assert user["who"]["reference"] == f"Patient/{pid}"
    app = next(a for a in issued["agent"] if a["type"]["coding"][0]["code"] == "110150")
    assert app["who"]["identifier"]["value"] == "app" and app["network"]["address"]
    assert "grant_type=authorization_code" in _query(issued) and "code" not in _query(issued).replace(
        "authorization_code", "").replace("redirect_uri", "")
    text = orjson.dumps(issued).decode()
    for secret in (tok["access_token"], tok["refresh_token"], PASSWORD):
        assert secret not in text
    # the patient sees it in their access history
    with w.client(user_token(w.server, "app", f"u-{pid}", SCOPE)["access_token"]) as c:
        events = c.get(f"/Patient/{pid}/$access-history", params={"_lang": "en", "_count": "100"}).json()["entry"]
    assert any("was granted access for" in e["resource"]["text"]["div"] for e in events)


def test_refresh_and_revocation_are_audited(w):
    pid, _ = w.fresh_patient(user=False)
    add_user(w.server, f"r-{pid}", "patient", f"Patient/{pid}")
    tok = user_token(w.server, "app", f"r-{pid}", SCOPE)
    r = httpx.post(w.server.base + "/auth/token", data={"grant_type": "refresh_token", "client_id": "app",
                                                        "refresh_token": tok["refresh_token"]})
    assert r.status_code == 200, r.text
    fresh = r.json()
    [refreshed] = [e for e in _auth_events(w.server, "ITI-71") if _jti(fresh["access_token"]) in _token_ids(e)]
    assert "grant_type=refresh_token" in _query(refreshed)
    assert fresh["refresh_token"] not in orjson.dumps(refreshed).decode()
    assert tok["refresh_token"] not in orjson.dumps(refreshed).decode()
    r = httpx.post(w.server.base + "/auth/revoke", data={"client_id": "app", "token": fresh["refresh_token"]})
    assert r.status_code == 200
    revoked = [e for e in _auth_events(w.server, "110123") if any(
        x["what"].get("reference") == f"Patient/{pid}" for x in e.get("entity", []))]
    assert len(revoked) == 1 and revoked[0]["outcome"] == "0"
    assert any(v.startswith("grant:") for v in _token_ids(revoked[0]))
    assert fresh["refresh_token"] not in orjson.dumps(revoked[0]).decode()


def test_failed_sign_ins_are_audited_under_the_account_only_when_it_exists(w):
    pid, _ = w.fresh_patient(user=False)
    add_user(w.server, f"f-{pid}", "patient", f"Patient/{pid}")
    assert _sign_in(w.server, f"f-{pid}", "not the password").status_code == 401
    typo = "my-password-typed-as-a-name-" + pid[:8]
    assert _sign_in(w.server, typo, "x").status_code == 401
    failed = [e for e in _auth_events(w.server, "110122") if e["outcome"] == "4"]
    mine = [e for e in failed if any(a["who"].get("reference") == f"Patient/{pid}" for a in e["agent"])]
    assert len(mine) == 1 and "wrong user name or password" in mine[0]["outcomeDesc"]
    assert "not the password" not in orjson.dumps(mine[0]).decode()
    assert not [e for e in failed if typo in orjson.dumps(e).decode()]


def test_backend_tokens_and_refused_requests_are_audited(w):
    key = rsa_key()
    add_client(w.server, "audited-backend", "confidential-asymmetric", "system/Patient.rs", redirect_uris=(),
               jwks=public_jwks(key))
    token_url = w.server.base + "/auth/token"
    signed = assertion("audited-backend", key, token_url)
    r = httpx.post(token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                    "client_assertion_type": ASSERTION, "client_assertion": signed})
    assert r.status_code == 200
    [issued] = [e for e in _auth_events(w.server, "ITI-71") if _jti(r.json()["access_token"]) in _token_ids(e)]
    [app] = [a for a in issued["agent"] if a.get("requestor")]
    assert app["who"]["identifier"]["value"] == "audited-backend"
    assert signed not in orjson.dumps(issued).decode()
    r = httpx.post(token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                    "client_assertion_type": ASSERTION, "client_assertion": signed})  # replayed
    assert r.status_code == 401
    refused = [e for e in _auth_events(w.server, "ITI-71") if e["outcome"] == "4" and "jti replay" in e["outcomeDesc"]]
    assert refused and signed not in orjson.dumps(refused).decode()
    [result] = run_hapi([{"id": "iti-71", "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
                          "resource": issued}]).values()
    assert result["valid"], [i for i in result["issues"] if i["severity"] in ("error", "fatal")]
    with w.client("operator") as op:  # the auth events are on the hash chains like every other
        r = op.get("/AuditEvent/$verify")
        assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "information", r.text


def test_no_token_when_the_audit_cannot_be_written(ferretdb_uri):
    with InProcessServer(ferretdb_uri) as srv:
        key = rsa_key()
        add_client(srv, "svc", "confidential-asymmetric", "system/Patient.rs", redirect_uris=(), jwks=public_jwks(key))
        token_url = srv.base + "/auth/token"

        def ask() -> httpx.Response:
            return httpx.post(token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.rs",
                                               "client_assertion_type": ASSERTION,
                                               "client_assertion": assertion("svc", key, token_url)})

        services = srv.app.state.services  # type: ignore[attr-defined]
        trail = services.trail
        dead = composition.connect(services.settings, "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
        live, trail.repo = trail.repo, composition.repository(dead, dead["x"])
        try:
            r = ask()
            assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"
            assert "access_token" not in r.text
        finally:
            trail.repo = live
        assert ask().status_code == 200
