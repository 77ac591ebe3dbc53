"""Issue 12 (hostile clients), authorization side: throttled secret checks that cannot be raced,
equal work for unknown client ids, introspection only for confidential callers, disabling a user
and removing a signing key take effect, client JWKS only over https."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.auth_helpers import (
    ASSERTION,
    PASSWORD,
    add_client,
    add_user,
    assertion,
    authorize_params,
    backend_token,
    fhir_client,
    pkce,
    public_jwks,
    rsa_key,
    run_db,
    user_token,
)
from tests.conftest import ROOT, start_server, stop_server
from tests.inprocess import InProcessServer

SCOPE = "launch/patient patient/*.rs offline_access"
SECRET_1, SECRET_2 = "right-secret-1-of-at-least-32-characters", "right-secret-2-of-at-least-32-characters"


@pytest.fixture(scope="module")
def hard(ferretdb_uri):
    """A secured server that re-reads revocations and keys on every request and throttles early."""
    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_REVOCATION_CACHE_SECONDS": "0",
                                    "FHIR_CLIENT_MAX_FAILURES": "3", "FHIR_LOGIN_MAX_FAILURES": "5"})
    seeder = rsa_key()
    add_client(s, "seeder", "confidential-asymmetric", "system/*.cruds", redirect_uris=(), jwks=public_jwks(seeder))
    with fhir_client(s, backend_token(s, "seeder", seeder, "system/*.cruds")["access_token"]) as c:
        r = c.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Durand"}]},
                   headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text
    s.patient = r.json()["id"]
    s.seeder = seeder
    add_client(s, "app", "public", "openid fhirUser launch/patient offline_access patient/*.rs")
    try:
        yield s
    finally:
        stop_server(s)


def _introspect(server, auth=None, **data):
    return httpx.post(server.base + "/auth/introspect", auth=auth, data={"token": "nothing", **data}, timeout=60)


def test_client_secret_guessing_is_throttled_per_client(hard):
    add_client(hard, "conf-1", "confidential-symmetric", SCOPE, secret=SECRET_1)
    add_client(hard, "conf-2", "confidential-symmetric", SCOPE, secret=SECRET_2)
    assert _introspect(hard, ("conf-1", SECRET_1)).json() == {"active": False}
    statuses = [_introspect(hard, ("conf-1", f"guess-{i}")).status_code for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    r = _introspect(hard, ("conf-1", SECRET_1))  # throttled: even the right secret waits
    assert r.status_code == 429 and r.json()["error"] == "invalid_client" and "retry-after" in r.headers
    for path in ("/auth/token", "/auth/revoke"):
        r = httpx.post(hard.base + path, auth=("conf-1", SECRET_1),
                       data={"grant_type": "refresh_token", "refresh_token": "x", "token": "x"})
        assert r.status_code == 429, (path, r.text)
    assert _introspect(hard, ("conf-2", SECRET_2)).status_code == 200  # another client is unaffected


def test_parallel_wrong_passwords_cannot_race_the_throttle(hard):
    """40 wrong passwords at once on one account: at most the limit (5) are evaluated, the rest are
    429, none is a 500 (the failure counter is one atomic upsert-safe $inc)."""
    add_user(hard, "racer", "patient", f"Patient/{hard.patient}")
    _, challenge = pkce()
    r = httpx.get(hard.base + "/auth/authorize", params=authorize_params(hard, "app", SCOPE, challenge))
    rid = re.search(r'name="rid" value="([^"]+)"', r.text).group(1)

    def attempt(i):
        return httpx.post(hard.base + "/auth/login", data={"rid": rid, "username": "racer", "password": f"wrong-{i}"},
                          timeout=120).status_code

    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(attempt, range(40)))
    assert sorted(set(statuses)) == [401, 429], statuses
    assert statuses.count(401) == 5


def test_unknown_client_ids_cost_the_same_work(ferretdb_uri, monkeypatch):
    """One digest per client_secret check whether the id is unknown, a public client or a
    confidential one (no client-id enumeration by timing), and no argon2 at all: client secrets are
    random, so a slow hash only gave anyone a way to make the server burn CPU. Counted, not timed."""
    from fhir_server.auth import stores

    digests, argon2 = [], []
    real_digest, real_verify = stores._client_digest, stores.verify_secret
    monkeypatch.setattr(stores, "_client_digest", lambda *a: digests.append(1) or real_digest(*a))
    monkeypatch.setattr(stores, "verify_secret", lambda *a: argon2.append(1) or real_verify(*a))
    with InProcessServer(ferretdb_uri) as srv:
        add_client(srv, "conf", "confidential-symmetric", SCOPE, secret=SECRET_1)
        add_client(srv, "pub", "public", SCOPE)
        for cid in ("nobody-" + uuid.uuid4().hex, "pub", "conf"):
            before = len(digests)
            r = httpx.post(srv.base + "/auth/introspect", auth=(cid, "wrong"), data={"token": "x"}, timeout=60)
            assert r.status_code == 401 and r.json()["error"] == "invalid_client"
            assert len(digests) - before == 1, cid
        before = len(digests)
        r = httpx.post(srv.base + "/auth/introspect", auth=("conf", SECRET_1), data={"token": "x"}, timeout=60)
        assert r.status_code == 200 and r.json() == {"active": False}
        assert len(digests) - before == 1 and argon2 == []


def test_client_secrets_are_long_and_stored_salted_and_legacy_hashes_are_upgraded(hard):
    """A client secret shorter than 32 characters is refused; a stored one is neither the secret
    nor its plain digest (a salt per client). A client whose secret was stored as argon2 (before
    this form) still authenticates, and from then on is stored the current way."""
    import hashlib

    from argon2 import PasswordHasher

    with pytest.raises(ValueError, match="at least 32"):
        add_client(hard, "short-" + uuid.uuid4().hex, "confidential-symmetric", SCOPE, secret="s" * 31)
    cid = "salted-" + uuid.uuid4().hex
    add_client(hard, cid, "confidential-symmetric", SCOPE, secret=SECRET_1)
    other = "salted-" + uuid.uuid4().hex
    add_client(hard, other, "confidential-symmetric", SCOPE, secret=SECRET_1)

    def stored(client_id):
        return run_db(hard, lambda db: db["auth_clients"].find_one({"_id": client_id}))["secret_hash"]

    kept, kept_other = stored(cid), stored(other)
    assert SECRET_1 not in kept and hashlib.sha256(SECRET_1.encode()).hexdigest() not in kept
    assert kept != kept_other  # the same secret, two different stored values

    legacy = "legacy-" + uuid.uuid4().hex
    add_client(hard, legacy, "confidential-symmetric", SCOPE, secret=SECRET_2)
    old = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(SECRET_2)
    run_db(hard, lambda db: db["auth_clients"].update_one({"_id": legacy}, {"$set": {"secret_hash": old}}))
    assert _introspect(hard, (legacy, SECRET_1)).status_code == 401
    assert stored(legacy) == old  # a wrong secret changes nothing
    assert _introspect(hard, (legacy, SECRET_2)).json() == {"active": False}
    upgraded = stored(legacy)
    assert upgraded != old and not upgraded.startswith("$argon2")
    assert _introspect(hard, (legacy, SECRET_2)).json() == {"active": False}
    assert _introspect(hard, (legacy, SECRET_1)).status_code == 401


def test_introspection_needs_a_confidential_client_or_a_resource_server_token(hard):
    tok = user_token(hard, "app", _patient_user(hard), SCOPE)
    # a bare public client id, or an app's own user token, cannot scan tokens
    r = _introspect(hard, token=tok["access_token"], client_id="app")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = httpx.post(hard.base + "/auth/introspect", data={"token": tok["access_token"]},
                   headers={"Authorization": f"Bearer {tok['access_token']}"})
    assert r.status_code == 401
    # a resource server with a backend-services token may
    rs = backend_token(hard, "seeder", hard.seeder, "system/*.cruds")["access_token"]
    r = httpx.post(hard.base + "/auth/introspect", data={"token": tok["access_token"]},
                   headers={"Authorization": f"Bearer {rs}"})
    assert r.status_code == 200 and r.json()["active"] is True


def _patient_user(server) -> str:
    name = "p-" + uuid.uuid4().hex[:8]
    add_user(server, name, "patient", f"Patient/{server.patient}")
    return name


def _cli(server, *args):
    env = {**os.environ, "FHIR_MONGODB_URI": server.mongodb_uri, "FHIR_DATABASE": server.database}
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_disabling_a_user_revokes_their_tokens(hard):
    name = _patient_user(hard)
    tok = user_token(hard, "app", name, SCOPE)
    with fhir_client(hard, tok["access_token"]) as c:
        assert c.get(f"/Patient/{hard.patient}").status_code == 200
        r = _cli(hard, "users", "disable", name)
        assert r.returncode == 0, r.stderr
        r = c.get(f"/Patient/{hard.patient}")
        assert r.status_code == 401 and "revoked" in r.json()["issue"][0]["diagnostics"]
    r = httpx.post(hard.base + "/auth/token", data={"grant_type": "refresh_token", "client_id": "app",
                                                    "refresh_token": tok["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_removing_a_signing_key_invalidates_tokens_already_cached(hard):
    tok = user_token(hard, "app", _patient_user(hard), SCOPE)
    with fhir_client(hard, tok["access_token"]) as c:
        assert c.get(f"/Patient/{hard.patient}").status_code == 200  # verified, now cached

        async def drop_keys(db):
            await db["auth_signing_keys"].delete_many({})

        run_db(hard, drop_keys)
        r = c.get(f"/Patient/{hard.patient}")
        assert r.status_code == 401, r.text
    # the server signs with a new key from then on
    fresh = user_token(hard, "app", _patient_user(hard), SCOPE)
    with fhir_client(hard, fresh["access_token"]) as c:
        assert c.get(f"/Patient/{hard.patient}").status_code == 200


def test_client_jwks_uri_must_be_https_outside_development(hard):
    key = rsa_key()

    async def register(db):
        from fhir_server.auth.stores import Client, MongoClientRegistry

        await MongoClientRegistry(db).add(Client("http-jwks", "confidential-asymmetric", "x", [], ["system/*.rs"],
                                                 None, None, "http://127.0.0.1:9/jwks.json"))

    run_db(hard, register)
    token_url = hard.base + "/auth/token"
    r = httpx.post(token_url, data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                    "client_assertion_type": ASSERTION,
                                    "client_assertion": assertion("http-jwks", key, token_url)})
    assert r.status_code == 401 and "https" in r.json()["error_description"]


@pytest.mark.parametrize("payload", [b"[1,2]", b'"text"', b"null", b"{not json"])
def test_malformed_client_assertion_is_400_invalid_client(hard, payload):
    import base64

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(b'{"alg":"RS384"}')
    r = httpx.post(hard.base + "/auth/token", data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION,
        "client_assertion": f"{header}.{b64(payload)}.{b64(b'sig')}"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"


def test_address_budget_and_forwarded_headers_from_untrusted_peers(ferretdb_uri):
    """Secret checks from one address share a budget, and an X-Forwarded-For from a peer that is not
    a configured proxy does not buy a fresh one."""
    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_ADDRESS_MAX_ATTEMPTS": "4"})
    try:
        statuses = [_introspect(s, (f"who-{uuid.uuid4().hex[:6]}", "guess")).status_code for _ in range(5)]
        assert statuses == [401, 401, 401, 401, 429]
        r = httpx.post(s.base + "/auth/introspect", auth=("another", "guess"), data={"token": "x"},
                       headers={"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7"})
        assert r.status_code == 429
        add_user(s, "nat-user", "admin")
        _, challenge = pkce()
        add_client(s, "app", "public", "openid fhirUser user/*.rs")
        r = httpx.get(s.base + "/auth/authorize", params=authorize_params(s, "app", "openid user/*.rs", challenge))
        rid = re.search(r'name="rid" value="([^"]+)"', r.text).group(1)
        r = httpx.post(s.base + "/auth/login", data={"rid": rid, "username": "nat-user", "password": PASSWORD})
        assert r.status_code == 429  # the address is over budget for every secret check
    finally:
        stop_server(s)


def test_secret_check_throttle_stays_exact_and_asks_only_id_equalities(ferretdb_uri):
    """Three processes' throttles (three StateStores) racing 30 attempts at one key with a limit of
    7 grant exactly 7; a right secret's slot given back is granted again. Every command the
    throttle sends names one slot by `_id` equality, which each engine serves from its `_id`
    index: a count or range over `_id` scans the whole collection on FerretDB, and that collection
    holds one document per attempt of every key, so each guess in a flood used to cost more than
    the one before."""
    import asyncio

    from pymongo import AsyncMongoClient, monitoring

    from fhir_server.auth.stores import StateStore

    commands: list[tuple[str, dict]] = []

    class Listener(monitoring.CommandListener):
        def started(self, event):
            body = event.command
            if body.get(event.command_name) == "auth_login_failures":
                for part in ("filter", "pipeline", "query"):
                    if part in body:
                        commands.append((event.command_name, body[part]))
                for d in body.get("deletes", []):
                    commands.append((event.command_name, d["q"]))
                if event.command_name == "insert":
                    commands.extend(("insert", {"_id": doc["_id"]}) for doc in body["documents"])

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    async def go():
        client = AsyncMongoClient(ferretdb_uri, tz_aware=True, event_listeners=[Listener()])
        try:
            db = client["t_throttle_" + uuid.uuid4().hex[:8]]
            stores = [StateStore(db) for _ in range(3)]
            key = "client:racer"
            granted = await asyncio.gather(*(stores[i % 3].count_attempt(key, 300, 7) for i in range(30)))
            slots = [g for g in granted if g is not None]
            assert len(slots) == 7 and len(set(slots)) == 7
            assert await stores[0].count_attempt(key, 300, 7) is None
            await stores[1].forgive([slots[2]])
            again = await stores[1].count_attempt(key, 300, 7)
            assert again == slots[2]
            assert await stores[2].count_attempt(key, 300, 7) is None
            await stores[0].clear_attempts(key, 300, 7)
            assert await stores[2].count_attempt(key, 300, 7) is not None
        finally:
            await client.close()

    asyncio.run(go())
    assert commands and {name for name, _ in commands} <= {"find", "insert", "delete"}
    for name, spec in commands:
        assert list(spec) == ["_id"] and isinstance(spec["_id"], str), (name, spec)
