"""Issue 12, item 6: schemathesis (PyPI) drives every route of the OpenAPI description the server
publishes (`GET /openapi.json`: the FHIR REST interactions of every type and the authorization
server), at least FUZZ_REQUESTS (3,000; with tests/test_fuzz.py's 10,000 hypothesis-generated
requests the suite sends over 13,000 fuzzed requests), derandomized so a run is repeatable;
half of them with an operator service's token (they reach the handlers), half without. Every
answer is below 500 and has the error shape of its endpoint (an OperationOutcome under /fhir, an
OAuth error under /auth), and a rejected write writes nothing (its type's history keeps its size).
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from tests.auth_helpers import add_client, backend_token, public_jwks, rsa_key
from tests.conftest import start_server, stop_server

FUZZ_REQUESTS = int(os.environ.get("FHIR_OPENAPI_FUZZ_REQUESTS", "3000"))
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@pytest.fixture(scope="module")
def api(ferretdb_uri):
    server = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false"})
    try:
        key = rsa_key()
        add_client(server, "fuzzer", "confidential-asymmetric", "system/*.cruds", redirect_uris=(),
                   jwks=public_jwks(key), operator=True)
        token = backend_token(server, "fuzzer", key, "system/*.cruds")["access_token"]
        doc = httpx.get(server.base + "/openapi.json").raise_for_status().json()
        with MongoClient(server.mongodb_uri) as client:
            yield server, token, doc, client[server.database]
    finally:
        stop_server(server)


def test_the_description_is_public_and_covers_every_stored_type(api):
    server, _, doc, _ = api
    with httpx.Client() as c:
        types = {r["type"] for r in c.get(server.fhir_base + "/metadata").json()["rest"][0]["resource"]}
    assert doc["openapi"].startswith("3.0")
    assert types and {f"/fhir/{t}/{{id}}" for t in types} <= set(doc["paths"])
    assert {"/auth/token", "/auth/introspect", "/auth/revoke", "/auth/authorize"} <= set(doc["paths"])


def _history_size(db, path: str) -> tuple[str, int] | None:
    parts = path.split("/")
    if len(parts) < 3 or parts[1] != "fhir" or not parts[2][:1].isupper():
        return None
    coll = f"{parts[2]}_history"
    return coll, db[coll].count_documents({})


def test_every_route_survives_schemathesis(api):
    server, token, doc, db = api
    schema = schemathesis.openapi.from_dict(doc)
    operations = [r.ok() for r in schema.get_all_operations()]
    # operations with few distinct inputs (no parameters) end early: the others make up for them
    per_operation = -(-FUZZ_REQUESTS * 13 // (10 * len(operations)))
    sent = {"n": 0}

    for operation in operations:
        @settings(max_examples=per_operation, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), authorized=st.booleans())
        def run(case, authorized):
            headers = {"Authorization": f"Bearer {token}"} if authorized else {}
            before = _history_size(db, case.formatted_path) if case.method.upper() in WRITES else None
            r = case.call(base_url=server.base, headers=headers)
            sent["n"] += 1
            label = f"{case.method} {case.formatted_path} -> {r.status_code}"
            assert r.status_code < 500, (label, r.text[:500])
            ctype = r.headers.get("content-type") or ""
            ctype = ctype[0] if isinstance(ctype, list) else ctype
            if r.status_code >= 400 and ctype.split(";")[0].endswith("json"):
                body = r.json()
                if case.formatted_path.startswith("/fhir"):
                    assert body.get("resourceType") == "OperationOutcome", (label, body)
                elif case.formatted_path.startswith("/auth"):
                    assert "error" in body, (label, body)
            if before is not None and r.status_code >= 400:
                coll, size = before
                assert db[coll].count_documents({}) == size, (label, "a rejected write wrote")

        run()
    assert sent["n"] >= FUZZ_REQUESTS, sent


@pytest.mark.parametrize("method,path,params", [
    ("GET", "/fhir/Patient", {"name": "a\x00b"}),  # found by schemathesis: PostgreSQL refused the NUL (500)
    ("PUT", "/fhir/List", {"code": "\x00"}),
    ("GET", "/fhir/Patient", {"\x01name": "x"}),
])
def test_control_characters_in_parameters_are_a_client_error(api, method, path, params):
    server, token, _, _ = api
    r = httpx.request(method, server.base + path, params=params, headers={"Authorization": f"Bearer {token}"},
                      json={"resourceType": "List", "status": "current", "mode": "working"} if method == "PUT" else None)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
