"""Discovery, the authorization code flow and every token error the issue lists."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from joserfc import jwk, jwt
from joserfc.jwk import KeySet

from tests.auth_helpers import (
    ASSERTION,
    CALLBACK,
    assertion,
    authorize_params,
    browser_login,
    exchange,
    fhir_client,
    pkce,
    redirect_query,
    run_db,
    user_token,
)
from tests.auth_world import CONF_SECRET

SCOPE = "openid fhirUser launch/patient patient/*.rs offline_access"


# --- discovery -----------------------------------------------------------------------------------

def test_smart_configuration(auth_world):
    s = auth_world.server
    r = httpx.get(s.fhir_base + "/.well-known/smart-configuration", headers={"Accept": "application/fhir+json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    conf = r.json()
    for required in ("token_endpoint", "grant_types_supported", "capabilities", "code_challenge_methods_supported",
                     "authorization_endpoint", "issuer", "jwks_uri"):
        assert required in conf, required
    for recommended in ("scopes_supported", "response_types_supported", "introspection_endpoint",
                        "revocation_endpoint", "token_endpoint_auth_methods_supported",
                        "token_endpoint_auth_signing_alg_values_supported"):
        assert recommended in conf, recommended
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert set(conf["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert {"launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient",
            "sso-openid-connect", "permission-v1", "permission-v2", "permission-patient", "permission-user",
            "permission-offline", "authorize-post"} <= set(conf["capabilities"])
    oidc = httpx.get(s.base + "/.well-known/openid-configuration").json()
    assert oidc["issuer"] == conf["issuer"] and oidc["jwks_uri"] == conf["jwks_uri"]
    keys = httpx.get(conf["jwks_uri"]).json()["keys"]
    assert keys and all("d" not in k and k["kid"] for k in keys)


def test_capability_statement_is_public_and_names_the_oauth_endpoints(auth_world):
    s = auth_world.server
    cs = httpx.get(s.fhir_base + "/metadata").json()
    ext = cs["rest"][0]["security"]["extension"][0]
    assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert uris["token"] == s.base + "/auth/token" and uris["authorize"] == s.base + "/auth/authorize"


@pytest.mark.parametrize("path", ["/Patient", "/DocumentReference/x", "/_history", "/"])
def test_no_token_is_401_with_a_challenge(auth_world, path):
    r = httpx.get(auth_world.server.fhir_base + path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer ")
    assert r.json()["resourceType"] == "OperationOutcome"


def test_garbage_token_is_401_invalid_token(auth_world):
    r = httpx.get(auth_world.server.fhir_base + "/Patient", headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


# --- the code flow -------------------------------------------------------------------------------

def test_token_response_carries_context_and_no_store(auth_world):
    w = auth_world
    verifier, challenge = pkce()
    q = browser_login(w.server, authorize_params(w.server, "app", SCOPE, challenge, nonce="n-1"), "helene")
    assert q["state"] == "st-1"
    r = exchange(w.server, "app", q["code"], verifier)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["patient"] == w.p1 and body["need_patient_banner"] is True
    assert set(body["scope"].split()) == set(SCOPE.split()) and body["refresh_token"]
    jwks = KeySet.import_key_set(httpx.get(w.server.base + "/auth/jwks").json())
    claims = jwt.decode(body["id_token"], jwks, algorithms=["RS256"]).claims
    assert claims["fhirUser"] == f"{w.server.fhir_base}/Patient/{w.p1}" and claims["aud"] == "app"
    assert claims["nonce"] == "n-1" and claims["iss"] == w.server.base + "/auth"


def test_patient_user_only_ever_gets_own_record(auth_world):
    w = auth_world
    tok = user_token(w.server, "app", "jerome", SCOPE, patient=w.p1)  # a forged picker choice is ignored
    assert tok["patient"] == w.p2


def test_bad_verifier(auth_world):
    w = auth_world
    verifier, challenge = pkce()
    q = browser_login(w.server, authorize_params(w.server, "app", SCOPE, challenge), "helene")
    r = exchange(w.server, "app", q["code"], "x" * 50)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = exchange(w.server, "app", q["code"], verifier)  # the code was consumed by the failed attempt
    assert r.status_code == 400


def test_missing_verifier(auth_world):
    w = auth_world
    verifier, challenge = pkce()
    q = browser_login(w.server, authorize_params(w.server, "app", SCOPE, challenge), "helene")
    r = exchange(w.server, "app", q["code"], "")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_reused_code_is_refused_and_revokes_its_tokens(auth_world):
    w = auth_world
    verifier, challenge = pkce()
    q = browser_login(w.server, authorize_params(w.server, "app", SCOPE, challenge), "helene")
    first = exchange(w.server, "app", q["code"], verifier)
    assert first.status_code == 200
    again = exchange(w.server, "app", q["code"], verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    with fhir_client(w.server, first.json()["access_token"]) as c:
        assert c.get(f"/Patient/{w.p1}").status_code == 401


def test_wrong_redirect_uri_at_token(auth_world):
    w = auth_world
    verifier, challenge = pkce()
    q = browser_login(w.server, authorize_params(w.server, "app", SCOPE, challenge), "helene")
    r = exchange(w.server, "app", q["code"], verifier, redirect_uri=CALLBACK + "/other")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_unregistered_redirect_uri_is_not_redirected_to(auth_world):
    w = auth_world
    _, challenge = pkce()
    params = authorize_params(w.server, "app", SCOPE, challenge, redirect_uri="https://evil.example/cb")
    r = httpx.get(w.server.base + "/auth/authorize", params=params)
    assert r.status_code == 400 and "location" not in r.headers


@pytest.mark.parametrize("change", [
    {"code_challenge_method": "plain"},
    {"code_challenge_method": None},
    {"code_challenge": None},
    {"state": None},
    {"aud": "https://other.example/fhir"},
    {"response_type": "token"},
    {"launch": "no-such-launch"},
])
def test_authorize_errors_redirect_with_an_error(auth_world, change):
    w = auth_world
    _, challenge = pkce()
    params = authorize_params(w.server, "app", SCOPE, challenge)
    for k, v in change.items():
        if v is None:
            params.pop(k)
        else:
            params[k] = v
    r = httpx.get(w.server.base + "/auth/authorize", params=params)
    assert r.status_code == 302
    q = redirect_query(r.headers["location"])
    assert q["error"] in ("invalid_request", "unsupported_response_type")


def test_code_for_another_client(auth_world):
    w = auth_world
    verifier, challenge = pkce()
    q = browser_login(w.server, authorize_params(w.server, "app", SCOPE, challenge), "helene")
    r = httpx.post(w.server.base + "/auth/token", auth=("conf-app", CONF_SECRET),
                   data={"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CALLBACK,
                         "code_verifier": verifier})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_confidential_client_must_authenticate(auth_world):
    w = auth_world
    verifier, challenge = pkce()
    q = browser_login(w.server, authorize_params(w.server, "conf-app", SCOPE, challenge), "helene")
    r = exchange(w.server, "conf-app", q["code"], verifier)  # no secret
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = httpx.post(w.server.base + "/auth/token", auth=("conf-app", "wrong-secret"),
                   data={"grant_type": "authorization_code", "code": q["code"], "redirect_uri": CALLBACK,
                         "code_verifier": verifier})
    assert r.status_code == 401


def test_user_denies(auth_world):
    w = auth_world
    _, challenge = pkce()
    q = browser_login(w.server, authorize_params(w.server, "app", SCOPE, challenge), "helene", decision="deny")
    assert q["error"] == "access_denied" and q["state"] == "st-1"


def test_login_throttling(auth_world):
    w = auth_world
    _, challenge = pkce()
    with httpx.Client(base_url=w.server.base) as browser:
        r = browser.get("/auth/authorize", params=authorize_params(w.server, "app", SCOPE, challenge))
        import re

        rid = re.search(r'name="rid" value="([^"]+)"', r.text).group(1)
        statuses = [browser.post("/auth/login", data={"rid": rid, "username": "admin", "password": "nope-nope"}
                                 ).status_code for _ in range(6)]
        assert statuses[:5] == [401] * 5 and statuses[5] == 429
        # even the right password is refused while throttled
        assert browser.post("/auth/login", data={"rid": rid, "username": "admin",
                                                 "password": "correct horse battery"}).status_code == 429


def test_approval_needs_the_browser_that_signed_in(auth_world):
    w = auth_world
    _, challenge = pkce()
    with httpx.Client(base_url=w.server.base) as browser:
        r = browser.get("/auth/authorize", params=authorize_params(w.server, "app", SCOPE, challenge))
        import re

        rid = re.search(r'name="rid" value="([^"]+)"', r.text).group(1)
        assert browser.post("/auth/login", data={"rid": rid, "username": "helene",
                                                 "password": "correct horse battery"}).status_code == 200
    r = httpx.post(w.server.base + "/auth/approve", data={"rid": rid, "decision": "approve"})  # no cookie
    assert r.status_code == 403


# --- refresh, revocation, introspection ----------------------------------------------------------

def _refresh(server, refresh_token, client_id="app"):
    return httpx.post(server.base + "/auth/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                         "refresh_token": refresh_token})


def test_refresh_rotates_and_reuse_revokes_the_grant(auth_world):
    w = auth_world
    tok = user_token(w.server, "app", "helene", SCOPE)
    r1 = _refresh(w.server, tok["refresh_token"])
    assert r1.status_code == 200 and r1.headers["cache-control"] == "no-store"
    new = r1.json()
    assert new["refresh_token"] != tok["refresh_token"] and new["patient"] == w.p1
    with fhir_client(w.server, new["access_token"]) as c:
        assert c.get(f"/Patient/{w.p1}").status_code == 200
    replay = _refresh(w.server, tok["refresh_token"])  # the rotated one, stolen and replayed
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert _refresh(w.server, new["refresh_token"]).status_code == 400  # the whole grant is gone
    with fhir_client(w.server, new["access_token"]) as c:
        assert c.get(f"/Patient/{w.p1}").status_code == 401


def test_no_refresh_token_without_offline_or_online_access(auth_world):
    w = auth_world
    tok = user_token(w.server, "app", "helene", "launch/patient patient/*.rs")
    assert "refresh_token" not in tok and "id_token" not in tok


def test_online_access_gives_a_refresh_token(auth_world):
    w = auth_world
    tok = user_token(w.server, "app", "helene", "launch/patient patient/*.rs online_access")
    assert tok["refresh_token"]


def test_revoked_access_token_is_401(auth_world):
    w = auth_world
    tok = user_token(w.server, "app", "helene", SCOPE)
    with fhir_client(w.server, tok["access_token"]) as c:
        assert c.get(f"/Patient/{w.p1}").status_code == 200
        r = httpx.post(w.server.base + "/auth/revoke", data={"token": tok["access_token"], "client_id": "app"})
        assert r.status_code == 200
        r = c.get(f"/Patient/{w.p1}")
        assert r.status_code == 401 and "revoked" in r.json()["issue"][0]["diagnostics"]


def test_revoking_the_refresh_token_revokes_the_grant(auth_world):
    w = auth_world
    tok = user_token(w.server, "app", "helene", SCOPE)
    assert httpx.post(w.server.base + "/auth/revoke", data={"token": tok["refresh_token"], "client_id": "app",
                                                            "token_type_hint": "refresh_token"}).status_code == 200
    assert _refresh(w.server, tok["refresh_token"]).status_code == 400
    with fhir_client(w.server, tok["access_token"]) as c:
        assert c.get(f"/Patient/{w.p1}").status_code == 401


def test_introspection(auth_world):
    w = auth_world
    tok = user_token(w.server, "app", "dr.martin", "openid fhirUser launch/patient patient/*.rs", patient=w.p1)
    r = httpx.post(w.server.base + "/auth/introspect", auth=("conf-app", CONF_SECRET),
                   data={"token": tok["access_token"]})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    info = r.json()
    assert info["active"] is True and info["client_id"] == "app" and info["patient"] == w.p1
    assert info["sub"] == "dr.martin" and info["iss"] == w.server.base + "/auth"
    assert info["fhirUser"] == f"{w.server.fhir_base}/Practitioner/{w.pr1}"
    assert set(info["scope"].split()) == {"openid", "fhirUser", "launch/patient", "patient/*.rs"}
    assert info["exp"] > time.time()
    r = httpx.post(w.server.base + "/auth/introspect", auth=("conf-app", CONF_SECRET), data={"token": "nope"})
    assert r.json() == {"active": False}
    assert httpx.post(w.server.base + "/auth/introspect", data={"token": tok["access_token"]}).status_code == 401


# --- forged tokens: expired, wrong audience, foreign key -----------------------------------------

def _server_key(server):
    async def work(db):
        return await db["auth_signing_keys"].find_one({}, sort=[("created", -1)])

    doc = run_db(server, work)
    return doc["_id"], jwk.RSAKey.import_key(doc["jwk"])


def _forge(server, key_kid=None, **overrides):
    kid, key = key_kid or _server_key(server)
    now = int(time.time())
    claims = {"iss": server.base + "/auth", "sub": "x", "aud": server.fhir_base, "iat": now, "exp": now + 600,
              "jti": uuid.uuid4().hex, "client_id": "app", "scope": "system/*.rs", "operator": True, **overrides}
    return jwt.encode({"alg": "RS256", "kid": kid, "typ": "at+jwt"}, claims, key)


@pytest.mark.parametrize("overrides,why", [
    ({}, None),
    ({"exp": int(time.time()) - 10}, "expired"),
    ({"aud": "https://other.example/fhir"}, "aud"),
    ({"iss": "https://other.example/auth"}, "issued"),
])
def test_forged_tokens(auth_world, overrides, why):
    s = auth_world.server
    with fhir_client(s, _forge(s, **overrides)) as c:
        r = c.get(f"/Patient/{auth_world.p1}")
    if why is None:
        assert r.status_code == 200  # the control: a well-formed token signed with the server's key works
    else:
        assert r.status_code == 401 and why in r.json()["issue"][0]["diagnostics"]


def test_token_signed_by_another_key_is_refused(auth_world):
    s = auth_world.server
    kid, _ = _server_key(s)
    other = jwk.RSAKey.generate_key(2048, private=True)
    with fhir_client(s, _forge(s, key_kid=(kid, other))) as c:
        assert c.get(f"/Patient/{auth_world.p1}").status_code == 401


# --- backend services: client assertion errors ---------------------------------------------------

def _cc(server, client_assertion, scope="system/DocumentReference.rs", **extra):
    return httpx.post(server.base + "/auth/token", data={"grant_type": "client_credentials", "scope": scope,
                                                         "client_assertion_type": ASSERTION,
                                                         "client_assertion": client_assertion, **extra})


def test_replayed_assertion(auth_world):
    w = auth_world
    url = w.server.base + "/auth/token"
    a = assertion("backend", w.keys["backend"], url)
    assert _cc(w.server, a).status_code == 200
    r = _cc(w.server, a)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client" and "replay" in r.json()["error_description"]


@pytest.mark.parametrize("kwargs", [
    {"aud": "https://other.example/token"},
    {"lifetime": 3600},
    {"lifetime": -30},
    {"alg": "RS256"},
    {"sub": "someone-else"},
])
def test_bad_assertions(auth_world, kwargs):
    w = auth_world
    url = w.server.base + "/auth/token"
    kwargs = dict(kwargs)
    alg = kwargs.pop("alg", "RS384")
    lifetime = kwargs.pop("lifetime", 240)
    a = assertion("backend", w.keys["backend"], url, alg=alg, lifetime=lifetime, **kwargs)
    r = _cc(w.server, a)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_assertion_signed_by_an_unregistered_key(auth_world):
    w = auth_world
    url = w.server.base + "/auth/token"
    stranger = jwk.RSAKey.generate_key(2048, parameters={"kid": w.keys["backend"].kid}, private=True)
    assert _cc(w.server, assertion("backend", stranger, url)).status_code == 401


def test_backend_token_expires_within_five_minutes_and_has_no_refresh(auth_world):
    w = auth_world
    r = _cc(w.server, assertion("backend", w.keys["backend"], w.server.base + "/auth/token"))
    body = r.json()
    assert body["expires_in"] <= 300 and "refresh_token" not in body and r.headers["cache-control"] == "no-store"


def test_ehr_launch_resolves_the_stored_context(auth_world):
    from tests.auth_helpers import add_launch

    w = auth_world
    launch = add_launch(w.server, w.p1, encounter="enc-1")
    tok = user_token(w.server, "app", "dr.martin", "launch openid fhirUser patient/*.rs", launch=launch)
    assert tok["patient"] == w.p1 and tok["encounter"] == "enc-1"
    assert tok["need_patient_banner"] is False  # the EHR shows the banner
    assert {"reference": "Encounter/enc-1"} in tok["fhirContext"]
    with fhir_client(w.server, tok["access_token"]) as c:
        assert c.get(f"/Patient/{w.p1}").status_code == 200
        assert c.get(f"/Patient/{w.p2}").status_code == 404


def test_authorize_post(auth_world):
    w = auth_world
    _, challenge = pkce()
    r = httpx.post(w.server.base + "/auth/authorize", data=authorize_params(w.server, "app", SCOPE, challenge))
    assert r.status_code == 200 and 'name="rid"' in r.text
