"""Issue 12, item 6: hypothesis-generated requests against every route — FHIR REST (every
interaction shape, generated FHIR-like JSON, JSON Patch, forms, hostile headers and cursors) and
the authorization server — at least FUZZ_REQUESTS (10,000) of them, derandomized so a run is
repeatable. Every answer is below 500 and has the error shape of its endpoint, and a rejected
write writes nothing (the history of the type it addressed keeps its size).
"""

from __future__ import annotations

import json
import os
import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient

from tests.conftest import start_server, stop_server

FUZZ_REQUESTS = int(os.environ.get("FHIR_FUZZ_REQUESTS", "10000"))
TYPES = ["Patient", "Practitioner", "PractitionerRole", "Organization", "Consent", "DocumentReference", "AuditEvent",
         "Provenance", "Binary", "List"]
ELEMENTS = ["resourceType", "id", "meta", "text", "div", "status", "name", "family", "given", "identifier", "system",
            "value", "reference", "subject", "extension", "url", "valueString", "gender", "birthDate", "content",
            "attachment", "data", "contentType", "entry", "request", "method", "resource", "type", "telecom",
            "_family", "contained", "active", "code", "coding", "display", "period", "start", "securityContext"]
PARAMS = ["_count", "_cursor", "_sort", "_include", "_revinclude", "_has:Observation:subject:code", "_summary",
          "_elements", "_total", "_since", "_format", "_pretty", "name", "name:exact", "name:contains", "identifier",
          "birthdate", "gender:not", "subject:Patient.name", "organization.name", "_id", "_lastUpdated", "date",
          "patient", "family:missing", "_tag", "_security", "mode"]
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
SAFE = st.text(alphabet=string.ascii_letters + string.digits + "-._:/|$,*%?=&#[]{}\\ ", max_size=30)


def _json():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                        TEXT, st.sampled_from(["", "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>",
                                               "<script>x</script>", "Patient/1", "urn:uuid:0", "1e20"]))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(ELEMENTS), TEXT), inner, max_size=5)),
        max_leaves=25)


def _resource():
    return st.builds(lambda t, body: {"resourceType": t, **body} if isinstance(body, dict) else body,
                     st.sampled_from(TYPES + ["Bundle", "Parameters", "Nope"]), _json())


@st.composite
def fhir_request(draw, ids):
    t = draw(st.sampled_from(TYPES + ["Observation", "nope", "$validate"]))
    rid = draw(st.one_of(st.sampled_from(ids), SAFE.filter(lambda s: "/" not in s and "?" not in s and "#" not in s)))
    path = draw(st.sampled_from([
        "", "metadata", "_history", f"{t}", f"{t}/{rid}", f"{t}/{rid}/_history", f"{t}/{rid}/_history/1",
        f"{t}/{rid}/_history/{rid}", f"{t}/_search", f"{t}/_history", f"{t}/$validate", f"{t}/{rid}/$validate",
        f"Patient/{rid}/{t}", f"{t}/{rid}/x/y/z", "$everything"]))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]))
    params = draw(st.lists(st.tuples(st.one_of(st.sampled_from(PARAMS), SAFE), st.one_of(SAFE, TEXT)), max_size=4))
    headers = {}
    kind = draw(st.sampled_from(["fhir", "json", "patch", "form", "raw", "none"]))
    body = None
    if kind in ("fhir", "json"):
        headers["Content-Type"] = "application/fhir+json" if kind == "fhir" else "application/json"
        value = draw(st.one_of(_resource(), _json()))
        body = json.dumps(value).encode() if draw(st.booleans()) else draw(st.binary(max_size=60))
    elif kind == "patch":
        headers["Content-Type"] = "application/json-patch+json"
        ops = draw(st.lists(st.fixed_dictionaries({"op": st.sampled_from(["add", "remove", "replace", "move", "x"]),
                                                   "path": st.sampled_from(["/name", "/id", "/resourceType", "/",
                                                                            "/name/0/family", "/x~1y", ""]),
                                                   "value": _json()}), max_size=3))
        body = json.dumps(ops).encode()
    elif kind == "form":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = draw(SAFE).encode()
    elif kind == "raw":
        headers["Content-Type"] = draw(st.sampled_from(["text/html", "application/pdf", "image/png", "text/plain",
                                                        "multipart/form-data; boundary=x", "bad"]))
        body = draw(st.binary(max_size=80))
    for name, values in (("If-Match", ['W/"1"', '"x"', "*", 'W/"99999999999999999999"']),
                         ("If-None-Exist", ["identifier=a|b", "x=&&", "_has:x"]),
                         ("Prefer", ["return=minimal", "return=OperationOutcome", "handling=strict", "respond-async"]),
                         ("Accept", ["application/fhir+json", "*/*", "text/html", "application/xml", ";;"]),
                         ("X-Security-Context", ["Patient/1", "x"])):
        if draw(st.integers(0, 4)) == 0:
            headers[name] = draw(st.sampled_from(values))
    return method, "/fhir/" + path if path else "/fhir", params, headers, body


@st.composite
def auth_request(draw):
    path = draw(st.sampled_from(["/auth/token", "/auth/introspect", "/auth/revoke", "/auth/authorize", "/auth/login",
                                 "/auth/approve", "/auth/jwks", "/.well-known/openid-configuration"]))
    fields = draw(st.dictionaries(st.sampled_from(
        ["grant_type", "code", "client_id", "client_secret", "client_assertion", "client_assertion_type", "token",
         "refresh_token", "redirect_uri", "code_verifier", "scope", "rid", "username", "password", "decision",
         "response_type", "state", "aud", "code_challenge", "code_challenge_method", "launch", "patient"]),
        st.one_of(SAFE, TEXT, st.sampled_from(["authorization_code", "refresh_token", "client_credentials",
                                               "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                               "eyJhbGciOiJSUzM4NCJ9.WzFd.c2ln", "approve", "code", "S256"])),
        max_size=6))
    headers = {}
    if draw(st.booleans()):
        headers["Authorization"] = draw(st.sampled_from(["Basic", "Basic !!!", "Basic YTpi", "Bearer x.y.z",
                                                         "Bearer", "Basic " + "QQ==" * 3]))
    method = draw(st.sampled_from(["GET", "POST"]))
    return method, path, fields, headers


@pytest.fixture(scope="module")
def fuzz_server(ferretdb_uri):
    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "true"})
    ids = []
    with s.client() as c:
        for t, body in (("Patient", {"name": [{"family": "Fuzz"}]}), ("Organization", {"name": "Fuzz"}),
                        ("Binary", {"contentType": "text/plain", "data": "aGk="})):
            r = c.post(f"/{t}", json={"resourceType": t, **body}, headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 201
            ids.append(r.json()["id"])
    try:
        yield s, ids
    finally:
        stop_server(s)


def _history_size(db, path: str) -> int:
    parts = [p for p in path.split("/") if p][1:]
    if parts and parts[0] in TYPES:
        return db[parts[0] + "_history"].estimated_document_count()
    return sum(db[t + "_history"].estimated_document_count() for t in TYPES)


def test_fuzz_every_route_no_5xx_and_no_write_from_a_rejected_request(fuzz_server):
    server, ids = fuzz_server
    sent = {"n": 0}
    http = httpx.Client(base_url=server.base, timeout=60)
    mongo = MongoClient(server.mongodb_uri)
    db = mongo[server.database]

    @settings(max_examples=FUZZ_REQUESTS, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(fhir_request(ids), fhir_request(ids), fhir_request(ids), auth_request()))
    def one(req):
        if len(req) == 5:
            method, path, params, headers, body = req
            writes = method in ("POST", "PUT", "PATCH", "DELETE")
            before = _history_size(db, path) if writes else None
            r = http.request(method, path, params=params, headers=headers, content=body)
            sent["n"] += 1
            assert r.status_code < 500, (method, path, params, headers, body, r.status_code, r.text[:500])
            if r.status_code >= 400 and method != "HEAD":
                assert r.json()["resourceType"] == "OperationOutcome", r.text[:300]
                if writes:
                    assert _history_size(db, path) == before, ("a rejected write wrote", method, path, body)
        else:
            method, path, fields, headers = req
            if method == "GET":
                r = http.get(path, params=fields, headers=headers)
            else:
                r = http.post(path, data=fields, headers=headers)
            sent["n"] += 1
            assert r.status_code < 500, (method, path, fields, headers, r.status_code, r.text[:500])
            if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
                assert "error" in r.json()

    try:
        one()
    finally:
        http.close()
        mongo.close()
    assert sent["n"] >= FUZZ_REQUESTS
