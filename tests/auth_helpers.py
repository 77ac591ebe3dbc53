"""Helpers for the authorization tests: registering users and clients straight in the server's
database, signing client assertions, and walking the login/approval pages like a browser would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from joserfc import jwk, jwt
from pymongo import AsyncMongoClient

from fhir_server.auth.stores import Client, MongoClientRegistry, MongoUserDirectory, StateStore, User

CALLBACK = "http://127.0.0.1:9/callback"  # never fetched: tests read the redirect's Location
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PASSWORD = "correct horse battery"


def run_db(server, work):
    async def go():
        client = AsyncMongoClient(server.mongodb_uri, tz_aware=True)
        try:
            return await work(client[server.database])
        finally:
            await client.close()

    with ThreadPoolExecutor(1) as pool:  # a thread of its own: callers may be inside an event loop (Playwright)
        return pool.submit(asyncio.run, go()).result()


def add_user(server, username, role, fhir_user=None, rpps=None, password=PASSWORD, name="", break_glass=False):
    run_db(server, lambda db: MongoUserDirectory(db).add(User(username, role, fhir_user, name, rpps,
                                                              break_glass=break_glass), password))


def add_client(server, client_id, kind, scopes, redirect_uris=(CALLBACK,), secret=None, jwks=None, name=None,
               organization=None, operator=False):
    run_db(server, lambda db: MongoClientRegistry(db).add(
        Client(client_id, kind, name or client_id, list(redirect_uris), scopes.split(), None, jwks,
               organization=organization, operator=operator), secret))


def add_launch(server, patient, encounter=None) -> str:
    ctx = {"patient": patient, **({"encounter": encounter} if encounter else {})}
    return run_db(server, lambda db: StateStore(db).put_launch(ctx))


def rsa_key(kid=None):
    return jwk.RSAKey.generate_key(2048, parameters={"kid": kid or uuid.uuid4().hex}, private=True)


def ec_key(kid=None):
    return jwk.ECKey.generate_key("P-384", parameters={"kid": kid or uuid.uuid4().hex}, private=True)


def public_jwks(*keys) -> dict:
    return {"keys": [k.as_dict(private=False) for k in keys]}


def assertion(client_id, key, token_url, alg="RS384", lifetime=240, jti=None, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + lifetime,
              "jti": jti or uuid.uuid4().hex, **overrides}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def backend_token(server, client_id, key, scope, alg="RS384") -> dict:
    token_url = server.base + "/auth/token"
    r = httpx.post(token_url, data={"grant_type": "client_credentials", "scope": scope,
                                    "client_assertion_type": ASSERTION,
                                    "client_assertion": assertion(client_id, key, token_url, alg)})
    assert r.status_code == 200, r.text
    return r.json()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(server, client_id, scope, challenge, state="st-1", redirect_uri=CALLBACK, **extra) -> dict:
    return {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
            "state": state, "aud": server.fhir_base, "code_challenge": challenge, "code_challenge_method": "S256",
            **extra}


def _hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, html
    return unescape(m.group(1))


def browser_login(server, params: dict, username: str, password: str = PASSWORD, patient: str | None = None,
                  decision: str = "approve") -> dict:
    """GET /authorize, sign in, approve (choosing `patient` if asked): the redirect's query."""
    with httpx.Client(base_url=server.base, timeout=60) as browser:
        r = browser.get("/auth/authorize", params=params)
        assert r.status_code == 200, r.text
        rid = _hidden(r.text, "rid")
        r = browser.post("/auth/login", data={"rid": rid, "username": username, "password": password})
        assert r.status_code == 200, r.text
        form = {"rid": rid, "decision": decision}
        if patient is not None:
            form["patient"] = patient
        r = browser.post("/auth/approve", data=form)
        assert r.status_code == 302, r.text
        return redirect_query(r.headers["location"])


def redirect_query(location: str) -> dict:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == CALLBACK, location
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def exchange(server, client_id, code, verifier, redirect_uri=CALLBACK, **extra) -> httpx.Response:
    return httpx.post(server.base + "/auth/token", data={"grant_type": "authorization_code", "code": code,
                                                         "redirect_uri": redirect_uri, "client_id": client_id,
                                                         "code_verifier": verifier, **extra})


def user_token(server, client_id, username, scope, patient=None, **extra) -> dict:
    verifier, challenge = pkce()
    q = browser_login(server, authorize_params(server, client_id, scope, challenge, **extra), username,
                      patient=patient)
    r = exchange(server, client_id, q["code"], verifier)
    assert r.status_code == 200, r.text
    return r.json()


def fhir_client(server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.fhir_base, timeout=60,
                        headers={"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"})


def url_with(base: str, params: dict) -> str:
    return base + "?" + urlencode(params)
