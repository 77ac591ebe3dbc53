"""SMART Backend Services with a client nobody here wrote: authlib's OAuth2Session and its
PrivateKeyJWT client authentication (RS384 and ES384), then FHIR reads with the token."""

from __future__ import annotations

import time
import warnings

import httpx
import pytest

from tests.auth_helpers import ASSERTION, assertion, fhir_client

warnings.filterwarnings("ignore", module="authlib")


def authlib_token(server, client_id, key, alg, scope):
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    token_url = server.base + "/auth/token"
    # SMART requires exp at most 5 minutes ahead (authlib's default is an hour): set it explicitly
    auth = PrivateKeyJWT(token_url, alg=alg, headers={"kid": key.kid}, claims={"exp": int(time.time()) + 240})
    session = OAuth2Session(client_id, key, scope=scope, token_endpoint_auth_method=auth)
    return session.fetch_token(token_url, grant_type="client_credentials")


@pytest.mark.parametrize("client_id,alg", [("backend", "RS384"), ("backend-es", "ES384")])
def test_authlib_client_gets_a_token_and_reads(auth_world, client_id, alg):
    w = auth_world
    token = authlib_token(w.server, client_id, w.keys[client_id], alg, "system/DocumentReference.rs")
    assert token["token_type"].lower() == "bearer" and token["expires_in"] <= 300
    assert "refresh_token" not in token
    assert token["scope"] == "system/DocumentReference.rs"
    with fhir_client(w.server, token["access_token"]) as c:
        assert c.get(f"/DocumentReference/{w.doc_p1}").status_code == 200
        assert c.get(f"/DocumentReference/{w.doc_p2}").status_code == 200  # system/: every patient
        r = c.get(f"/Consent/{w.consent_p1}")
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
        r = c.post("/DocumentReference", json={"resourceType": "DocumentReference", "status": "current",
                                               "content": [{"attachment": {"url": "Binary/x"}}]},
                   headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 403


def test_scopes_beyond_the_registration_are_not_granted(auth_world):
    w = auth_world
    token = authlib_token(w.server, "backend", w.keys["backend"], "RS384",
                          "system/DocumentReference.cruds system/Patient.rs system/Consent.rs")
    # registered: system/DocumentReference.rs system/Patient.read -> only Patient.rs survives (read = rs)
    assert token["scope"] == "system/Patient.rs"


def test_user_scopes_are_never_granted_to_backend_services(auth_world):
    w = auth_world
    token_url = w.server.base + "/auth/token"
    r = httpx.post(token_url, data={"grant_type": "client_credentials", "scope": "patient/*.rs user/*.rs openid",
                                    "client_assertion_type": ASSERTION,
                                    "client_assertion": assertion("backend-es", w.keys["backend-es"], token_url,
                                                                  "ES384")})
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
