"""Issue 12 (hostile clients), FHIR side: no 500s, bounded work per request, work off the event loop.

Each test drives a real server over HTTP; each would have failed before its fix (500s, stalls,
unbounded Bundles, validation on the event loop, plain-text tracebacks in the log).
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import re
import subprocess
import threading
import uuid
from urllib.parse import urlencode

import httpx
import pytest

from tests.auth_helpers import add_client, backend_token, fhir_client, public_jwks, rsa_key
from tests.conftest import TEST_MAX_RESOURCE, start_server, stop_server
from tests.helpers import JSON_HEADERS, assert_outcome, patient
from tests.inprocess import InProcessServer


def _tagged(tag: str, **extra) -> dict:
    return patient(identifier=[{"system": "urn:test:hardening", "value": tag}], **extra)


def _count(fhir, tag: str) -> int:
    r = fhir.get("/Patient", params={"identifier": f"urn:test:hardening|{tag}", "_total": "accurate"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def _nested_extensions(depth: int) -> dict:
    ext: dict = {"url": "http://example.org/e", "valueString": "v"}
    for _ in range(depth):
        ext = {"url": "http://example.org/e", "extension": [ext]}
    return ext


@pytest.mark.parametrize("shape", ["extensions", "arrays"])
def test_deeply_nested_json_is_400_not_500(fhir, shape):
    tag = uuid.uuid4().hex
    deep = (json.dumps([_nested_extensions(400)]) if shape == "extensions"
            else "[" * 1000 + '"x"' + "]" * 1000)  # built as text: json.dumps itself cannot nest so deep

    def with_deep(resource: dict) -> str:
        return json.dumps({**resource, "extension": "DEEP"}).replace('"DEEP"', deep)

    body = _tagged(tag)
    assert_outcome(fhir.post("/Patient", content=with_deep(body), headers=JSON_HEADERS), 400, "too-costly")
    pid = uuid.uuid4().hex[:16]
    assert_outcome(fhir.put(f"/Patient/{pid}", content=with_deep({**body, "id": pid}), headers=JSON_HEADERS), 400)
    bundle = json.dumps({"resourceType": "Bundle", "type": "transaction",
                         "entry": [{"resource": "BODY", "request": {"method": "POST", "url": "Patient"}}]})
    assert_outcome(fhir.post("", content=bundle.replace('"BODY"', with_deep(body)), headers=JSON_HEADERS), 400)
    assert_outcome(fhir.post("/Patient/$validate", content=with_deep(body), headers=JSON_HEADERS), 400)
    assert _count(fhir, tag) == 0


def test_deep_json_patch_is_refused(fhir):
    pid = fhir.post("/Patient", json=_tagged(uuid.uuid4().hex), headers=JSON_HEADERS).json()["id"]
    ops = [{"op": "add", "path": "/extension", "value": [_nested_extensions(300)]}]
    r = fhir.patch(f"/Patient/{pid}", content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"})
    assert_outcome(r, 400)
    assert fhir.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_control_characters_in_strings_are_400(fhir):
    tag = uuid.uuid4().hex
    bad = _tagged(tag, name=[{"family": "Du\u0000pont"}])
    assert_outcome(fhir.post("/Patient", json=bad, headers=JSON_HEADERS), 400, "value")
    bad = _tagged(tag, name=[{"family": "Du\u001bpont"}])
    assert_outcome(fhir.post("/Patient", json=bad, headers=JSON_HEADERS), 400, "value")
    assert _count(fhir, tag) == 0
    ok = _tagged(tag, name=[{"family": "Du\tpont", "text": "line\r\nbreak"}])
    assert fhir.post("/Patient", json=ok, headers=JSON_HEADERS).status_code == 201


def test_oversized_resource_is_413_before_any_work_and_large_binaries_still_fit(fhir):
    tag = uuid.uuid4().hex
    big = _tagged(tag, name=[{"family": "x" * (TEST_MAX_RESOURCE + 10)}])
    assert_outcome(fhir.post("/Patient", json=big, headers=JSON_HEADERS), 413, "too-costly")
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": big, "request": {"method": "POST", "url": "Patient"}}]}
    r = fhir.post("", json=bundle, headers=JSON_HEADERS)
    assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"] == "413"
    assert _count(fhir, tag) == 0
    # a Binary's content goes to GridFS: more than the resource limit is fine, as JSON or raw
    content = bytes(range(256)) * ((TEST_MAX_RESOURCE + 4096) // 256)
    r = fhir.post("/Binary", json={"resourceType": "Binary", "contentType": "application/octet-stream",
                                   "data": base64.b64encode(content).decode()}, headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    raw = fhir.get(f"/Binary/{r.json()['id']}", headers={"Accept": "application/octet-stream"})
    assert raw.content == content
    r = fhir.post("/Binary", content=content, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text


def test_bundle_entry_limit_is_413_before_validation(fhir):
    entries = [{"request": {"method": "GET", "url": "Patient?_count=1"}}] * 1001
    r = fhir.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries}, headers=JSON_HEADERS)
    assert_outcome(r, 413, "too-costly")


def test_search_form_body_is_bounded(fhir):
    form = "&".join(f"name=n{i}" for i in range(20000))  # > 64 KiB
    r = fhir.post("/Patient/_search", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_outcome(r, 413, "too-costly")


@pytest.mark.parametrize("path", ["/Patient", "/Patient/_history", "/_history"])
def test_altered_or_forged_cursors_are_400(fhir, path):
    for cursor in ("1e20", "AAAA", base64.urlsafe_b64encode(b"x" * 40).decode(), "%00", "-" * 500):
        assert_outcome(fhir.get(path, params={"_cursor": cursor}), 400)


def test_bundle_entries_a_token_may_not_write_are_refused_before_their_content_is_validated(auth_world):
    """A read-only backend token sending a batch of (invalid) creates: each entry is 403 — decided
    before validation — instead of the whole Bundle's content being validated first (which gave 400)."""
    key = rsa_key()
    cid = "ro-" + uuid.uuid4().hex[:8]
    add_client(auth_world.server, cid, "confidential-asymmetric", "system/*.rs", redirect_uris=(),
               jwks=public_jwks(key))
    token = backend_token(auth_world.server, cid, key, "system/*.rs")["access_token"]
    invalid = {"resourceType": "Patient", "gender": "robot", "unknownElement": 1}
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": invalid, "request": {"method": "POST", "url": "Patient"}}] * 3}
    with fhir_client(auth_world.server, token) as c:
        r = c.post("", json=bundle, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["403"] * 3


@pytest.fixture
def held_validation(monkeypatch):
    """Large bodies' validation held on a gate that only the test opens: (entered, gate, worker
    pid). The worker pool is forked from this process (instead of from the fork server) so that it
    inherits the held validation; what the server validates itself (small bodies) is not held."""
    from concurrent.futures import ProcessPoolExecutor

    from fhir_server.fhir import offload
    from fhir_server.rest.handlers import write

    mp = multiprocessing.get_context("fork")
    entered, gate, worker = mp.Event(), mp.Event(), mp.Value("i", 0)
    real, server = write.validate_resource, os.getpid()

    def held(resource, **kw):
        if os.getpid() != server:
            worker.value = os.getpid()
            entered.set()
            gate.wait(30)
        return real(resource, **kw)

    monkeypatch.setattr(write, "validate_resource", held)
    monkeypatch.setattr(offload._Pool, "_process_pool", lambda self: ProcessPoolExecutor(1, mp_context=mp))
    return entered, gate, worker


def test_large_body_validation_runs_in_a_worker_process(ferretdb_uri, held_validation):
    """While a large resource is being validated, /health answers, and the validation runs in
    another process (fhir/offload.py: in a thread it would hold the GIL against the event loop).
    The validation is held on a gate that only the test opens, after /health has answered.
    Validated on the server instead, it would never reach the gate (and the worker's pid stays 0)."""
    entered, gate, worker = held_validation
    with InProcessServer(ferretdb_uri, insecure=True) as srv:
        body = _tagged(uuid.uuid4().hex, name=[{"family": "y" * 200_000}])
        result: dict = {}

        def post():
            with srv.client() as c:
                result["r"] = c.post("/Patient", json=body, headers=JSON_HEADERS)

        t = threading.Thread(target=post)
        t.start()
        try:
            assert entered.wait(30), "the write never reached validation"
            health = httpx.get(srv.base + "/health", timeout=10)
            assert health.status_code == 200
        finally:
            gate.set()
            t.join(60)
        assert result["r"].status_code == 201, result["r"].text
        assert worker.value not in (0, os.getpid()), "the body was validated in the server's own process"
        with srv.client() as c:  # what the worker validated is what was stored
            stored = c.get(f"/Patient/{result['r'].json()['id']}").json()
        assert stored["name"][0]["family"] == "y" * 200_000


def test_a_large_body_is_joined_off_the_event_loop(ferretdb_uri, monkeypatch):
    """While a large body's chunks are being joined into one (held on a gate that only the test
    opens), /health answers: the join runs on a thread (rest/app.py), where CPython copies a large
    join without the GIL. Joined on the event loop, the gate would hold the loop and /health with it."""
    from fhir_server.rest import app as app_module

    entered, gate, real = threading.Event(), threading.Event(), app_module.join_body

    def held(chunks):
        if sum(map(len, chunks)) >= app_module.JOIN_OFF_LOOP_BYTES:
            entered.set()
            gate.wait(30)
        return real(chunks)

    monkeypatch.setattr(app_module, "join_body", held)
    data = os.urandom(1024 * 1024 + 4096)
    with InProcessServer(ferretdb_uri, insecure=True) as srv:
        result: dict = {}

        def post():
            with srv.client() as c:
                result["r"] = c.post("/Binary", content=data, headers={"Content-Type": "application/octet-stream"})

        t = threading.Thread(target=post)
        t.start()
        try:
            assert entered.wait(30), "the body never reached the join"
            assert httpx.get(srv.base + "/health", timeout=10).status_code == 200
        finally:
            gate.set()
            t.join(60)
        assert result["r"].status_code == 201, result["r"].text
        with srv.client() as c:  # the joined body is the one sent
            assert c.get(result["r"].headers["Location"], headers={"Accept": "application/octet-stream"}).content == data


def _raw_exchange(base: str, request: str) -> tuple[str, bytes]:
    """Send `request` (headers only) and read until the server closes: (status line and headers,
    body). The socket timeout only guards the test."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(request.encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode(), rest


def test_a_client_has_at_most_its_share_of_large_requests_in_flight(ferretdb_uri, held_validation):
    """FHIR_CLIENT_MAX_LARGE_REQUESTS=1: while one of a client's large bodies is being validated
    (held on a gate, as above), its next large request is 429 with Retry-After before its body is
    read, and stores nothing; its small requests and another client's large ones go on; once the
    first is answered, the client may send a large body again (rest/admission.py)."""
    entered, gate, _ = held_validation
    with InProcessServer(ferretdb_uri, settings={"client_max_large_requests": 1}) as srv:
        tokens = {}
        for who in ("a", "b"):
            key, cid = rsa_key(), f"{who}-{uuid.uuid4().hex[:8]}"
            add_client(srv, cid, "confidential-asymmetric", "system/*.cruds", redirect_uris=(), jwks=public_jwks(key),
                       operator=True)
            tokens[who] = backend_token(srv, cid, key, "system/*.cruds")["access_token"]
        tag = uuid.uuid4().hex
        large = _tagged(tag, name=[{"family": "y" * 200_000}])
        results: dict = {}

        def post(who: str) -> None:
            with fhir_client(srv, tokens[who]) as c:
                results[who] = c.post("/Patient", json=large, headers=JSON_HEADERS)

        first = threading.Thread(target=post, args=("a",))
        first.start()
        other = None
        try:
            assert entered.wait(30), "the first large body never reached validation"
            with fhir_client(srv, tokens["a"]) as c:
                r = c.post("/Patient", json=large, headers=JSON_HEADERS)
                assert_outcome(r, 429, "throttled")
                assert r.headers["Retry-After"] == "1"
                # the refused body was never read, and the connection still serves the client
                small = c.post("/Patient", json=_tagged(tag), headers=JSON_HEADERS)
                assert small.status_code == 201, small.text
            # a body too large to receive only to drop it: answered before it is sent, then closed
            host = srv.base.removeprefix("http://")
            head, rest = _raw_exchange(srv.base, f"POST /fhir/Patient HTTP/1.1\r\nHost: {host}\r\n"
                                                 f"Authorization: Bearer {tokens['a']}\r\nContent-Type: "
                                                 f"application/fhir+json\r\nContent-Length: 8000000\r\n\r\n")
            assert head.startswith("HTTP/1.1 429") and "connection: close" in head.lower(), head
            assert b'"throttled"' in rest
            other = threading.Thread(target=post, args=("b",))
            other.start()
        finally:
            gate.set()
            first.join(60)
            if other is not None:
                other.join(60)
        assert results["a"].status_code == 201, results["a"].text
        assert results["b"].status_code == 201, results["b"].text  # another client's share is its own
        with fhir_client(srv, tokens["a"]) as c:
            assert c.post("/Patient", json=large, headers=JSON_HEADERS).status_code == 201  # the share came back
            assert _count(c, tag) == 4  # a's first and third large ones, its small one, b's: not the refused one


def test_refused_interactions_leave_no_reference_cycles(ferretdb_uri):
    """Each refused Bundle entry used to leave its exception, traceback and frames in a reference
    cycle that only the cyclic collector frees: under a flood of refused batches the full
    collections stopped the event loop for tens of ms each (ops/collector.py). The server runs in
    this process, so the collector's view of the garbage is the server's."""
    import gc

    from fhir_server.fhir.outcome import FhirError

    with InProcessServer(ferretdb_uri, insecure=True) as srv:
        entries = [{"request": {"method": "GET", "url": f"Patient/{uuid.uuid4()}"}} for _ in range(50)]
        with srv.client() as c:
            c.get("/Patient/warm-up")
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds unreachable is kept in gc.garbage
            try:
                r = c.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                           headers=JSON_HEADERS)
                assert r.status_code == 200
                assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["404"] * len(entries)
                gc.collect()
                cyclic = [o for o in gc.garbage if isinstance(o, FhirError)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        assert cyclic == [], f"{len(cyclic)} refusals were left in reference cycles"


def test_invalid_large_bodies_are_refused_by_the_worker_process_with_their_issues(server):
    """The worker's verdict reaches the client as the same OperationOutcome an inline validation
    gives (a FhirError crosses the process boundary as itself), and nothing is stored."""
    tag = uuid.uuid4().hex
    big = _tagged(tag, name=[{"family": "z" * 200_000}], gender="robot")
    small = _tagged(tag, name=[{"family": "z"}], gender="robot")
    with server.client() as c:
        r_big = c.post("/Patient", json=big, headers=JSON_HEADERS)
        r_small = c.post("/Patient", json=small, headers=JSON_HEADERS)
        assert r_big.status_code == r_small.status_code == 400, (r_big.text, r_small.text)
        assert [i["code"] for i in r_big.json()["issue"]] == [i["code"] for i in r_small.json()["issue"]]
        assert [i.get("expression") for i in r_big.json()["issue"]] == \
            [i.get("expression") for i in r_small.json()["issue"]]
        assert _count(c, tag) == 0


def test_every_log_line_is_json_under_hostile_requests(ferretdb_uri):
    """Hostile requests to the FHIR and auth endpoints: no 5xx, and every line the server writes
    (uvicorn's included) is one JSON object without a plain-text traceback."""
    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_LOG_LEVEL": "INFO"},
                     stderr=subprocess.PIPE)
    try:
        array_payload = base64.urlsafe_b64encode(b"[1,2,3]").rstrip(b"=").decode()
        header = base64.urlsafe_b64encode(b'{"alg":"RS384"}').rstrip(b"=").decode()
        with httpx.Client(base_url=s.base, timeout=30) as c:
            r = c.post("/auth/token", data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": f"{header}.{array_payload}.c2ln"})
            assert r.status_code == 400 and r.json()["error"] == "invalid_client"
            for path in ("/auth/token", "/auth/introspect", "/auth/revoke"):
                r = c.post(path, content=b"a=" + b"b" * 200_000,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
                assert r.status_code == 413 and r.json()["error"] == "invalid_request"
                r = c.post(path, content=b"\xff\xfe%%%", headers={"Content-Type": "application/x-www-form-urlencoded"})
                assert r.status_code < 500, (path, r.status_code, r.text)
            r = c.post("/auth/token", headers={"Authorization": "Basic !!!"}, data={"grant_type": "client_credentials"})
            assert r.status_code == 401
            r = c.get("/fhir/Patient", headers={"Authorization": "Bearer " + "a.b.c"})
            assert r.status_code == 401
    finally:
        stop_server(s)
        err = s.process.stderr.read().decode() if s.process.stderr else ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    for line in lines:
        record = json.loads(line)  # fails on any plain-text line
        assert isinstance(record, dict) and "level" in record, line
        assert "Traceback" not in record.get("msg", ""), line


# --- query amplification (item 2) ------------------------------------------------------------------

@pytest.mark.parametrize("params,why", [
    ([("name", f"n{i}") for i in range(65)], "search parameters"),
    ([("_revinclude", "DocumentReference:subject")] * 11, "_include"),
    ([("_has:Observation:subject:_has:AuditEvent:entity:_has:Provenance:target:agent", "x")], "_has"),
    ([("organization.partof.partof.partof.partof.name", "x")], "levels deep"),
    ([("identifier", ",".join(f"v{i}" for i in range(501)))], "values"),
])
def test_search_caps_are_too_costly(fhir, params, why):
    r = fhir.get("/Patient", params=params)
    body = assert_outcome(r, 400, "too-costly")
    assert why in body["issue"][0]["diagnostics"]
    r = fhir.post("/Patient/_search", content=urlencode(params).encode(),
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_outcome(r, 400, "too-costly")


def test_searches_within_the_caps_still_work(fhir):
    params = [("name", f"n{i}") for i in range(63)] + [("_revinclude", "DocumentReference:subject")] * 10
    assert fhir.get("/Patient", params=params).status_code == 200
    assert fhir.get("/Patient", params={"organization.partof.name": "x", "_count": "100000"}).status_code == 200


def test_database_time_budget_turns_runaway_reads_into_503(ferretdb_uri):
    """A budget far below any query's time (1 µs): reads, searches and history answer 503
    too-costly instead of running on; writes are not cut short."""
    s = start_server(ferretdb_uri, {"FHIR_DB_TIME_BUDGET_MS": "0.001"})
    try:
        with s.client() as c:
            created = c.post("/Patient", json=patient(), headers=JSON_HEADERS)
            assert created.status_code == 201, created.text
            pid = created.json()["id"]
            for path, params in ((f"/Patient/{pid}", None), ("/Patient", {"name": "Dupont"}),
                                 ("/Patient/_history", None)):
                r = c.get(path, params=params)
                assert_outcome(r, 503, "too-costly")
                assert r.headers["retry-after"] == "1"
    finally:
        stop_server(s)


# --- narratives (item 9) ---------------------------------------------------------------------------

XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'


@pytest.mark.parametrize("div", [
    f"<div {XHTML}><script>alert(1)</script>x</div>",
    f'<div {XHTML}><p onclick="steal()">x</p></div>',
    f'<div {XHTML}><a href=" javascript:alert(1)">x</a></div>',
    f'<div {XHTML}><img src="x" onerror="steal()"/></div>',
    f'<div {XHTML}><iframe src="https://evil.example"/>x</div>',
    f'<div {XHTML}><p style="background:url(https://evil.example/t)">x</p></div>',
    "<div>no namespace</div>",
    f"<div {XHTML}><p>unclosed</div>",
    f"<div {XHTML}>   </div>",
    f'<!DOCTYPE d [<!ENTITY e "x">]><div {XHTML}>&e;</div>',
])
def test_unsafe_narratives_are_refused_on_every_write_path(fhir, div):
    tag = uuid.uuid4().hex
    body = _tagged(tag, text={"status": "generated", "div": div})
    assert_outcome(fhir.post("/Patient", json=body, headers=JSON_HEADERS), 400, "value")
    pid = uuid.uuid4().hex[:16]
    assert_outcome(fhir.put(f"/Patient/{pid}", json={**body, "id": pid}, headers=JSON_HEADERS), 400)
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": body, "request": {"method": "POST", "url": "Patient"}}]}
    assert_outcome(fhir.post("", json=bundle, headers=JSON_HEADERS), 400)
    contained = _tagged(tag, contained=[{"resourceType": "Practitioner", "id": "gp",
                                         "text": {"status": "generated", "div": div}}],
                        generalPractitioner=[{"reference": "#gp"}])
    assert_outcome(fhir.post("/Patient", json=contained, headers=JSON_HEADERS), 400)
    existing = fhir.post("/Patient", json=_tagged(uuid.uuid4().hex), headers=JSON_HEADERS).json()["id"]
    ops = [{"op": "add", "path": "/text", "value": {"status": "generated", "div": div}}]
    assert_outcome(fhir.patch(f"/Patient/{existing}", json=ops,
                              headers={"Content-Type": "application/json-patch+json"}), 400)
    assert _count(fhir, tag) == 0


def test_safe_narratives_are_kept(fhir):
    div = (f'<div {XHTML}><p>Hélène&nbsp;<b>Dupont</b> &amp; co</p><a href="https://example.org/x?a=b">site</a>'
           '<a href="Patient/1">rel</a><table><tr><td style="color:red">1</td></tr></table>'
           '<img src="data:image/png;base64,iVBORw0KGgo=" alt="x"/></div>')
    r = fhir.post("/Patient", json=patient(text={"status": "generated", "div": div}), headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    assert r.json()["text"]["div"] == div


# --- headers and small leaks (item 8), the Host header (item 4), TLS (item 11) ----------------------

def test_html_pages_carry_csp_and_no_framing(auth_world):
    from tests.auth_helpers import authorize_params, pkce

    _, challenge = pkce()
    r = httpx.get(auth_world.server.base + "/auth/authorize",
                  params=authorize_params(auth_world.server, "app", "launch/patient patient/*.rs", challenge))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(auth_world.server.base + "/health").headers["x-content-type-options"] == "nosniff"


def test_raw_binary_is_never_active_content_of_our_origin(fhir):
    html = b"<html><script>alert(document.cookie)</script></html>"
    bid = fhir.post("/Binary", content=html, headers={"Content-Type": "text/html"}).json()["id"]
    r = fhir.get(f"/Binary/{bid}", headers={"Accept": "*/*"})
    assert r.status_code == 200 and r.content == html
    assert r.headers["content-disposition"] == "attachment"
    assert r.headers["x-content-type-options"] == "nosniff" and "sandbox" in r.headers["content-security-policy"]
    png = fhir.post("/Binary", content=b"\x89PNG\r\n", headers={"Content-Type": "image/png"}).json()["id"]
    r = fhir.get(f"/Binary/{png}", headers={"Accept": "image/png"})
    assert "content-disposition" not in r.headers and r.headers["x-content-type-options"] == "nosniff"


def test_metrics_need_the_metrics_token(server):
    from tests.conftest import TEST_METRICS_TOKEN

    assert httpx.get(server.base + "/metrics").status_code == 401
    assert httpx.get(server.base + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(server.base + "/metrics", headers={"Authorization": f"Bearer {TEST_METRICS_TOKEN}"})
    assert r.status_code == 200 and "fhir_requests_total" in r.text


def test_check_redacts_secret_uri_options(ferretdb_uri):
    import os
    import sys

    from tests.conftest import ROOT

    uri = ferretdb_uri.rstrip("/") + "/?tlsCertificateKeyFilePassword=hunter2-secret&appName=x"
    out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "check"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "FHIR_MONGODB_URI": uri, "FHIR_METRICS_TOKEN": "tok-secret-42"}, timeout=60)
    assert "hunter2-secret" not in out.stdout + out.stderr and "tok-secret-42" not in out.stdout
    assert "tlsCertificateKeyFilePassword=***" in out.stdout and "appName=x" in out.stdout


def test_the_host_header_cannot_choose_the_published_endpoints(server, ferretdb_uri):
    r = httpx.get(server.base + "/fhir/.well-known/smart-configuration", headers={"Host": "evil.example"})
    assert r.status_code == 400 and "evil.example" not in r.text
    r = httpx.get(server.fhir_base + "/metadata", headers={"Host": "evil.example"})
    assert_outcome(r, 400, "security")
    assert httpx.get(server.base + "/fhir/.well-known/smart-configuration").status_code == 200
    s = start_server(ferretdb_uri, {"FHIR_PUBLIC_BASE_URL": "https://dmp.example.org/fhir"})
    try:
        conf = httpx.get(s.base + "/fhir/.well-known/smart-configuration", headers={"Host": "evil.example"}).json()
        assert conf["authorization_endpoint"] == "https://dmp.example.org/auth/authorize"
    finally:
        stop_server(s)


def test_flow_cookie_is_secure_behind_a_tls_proxy(ferretdb_uri):
    """A TLS-terminating proxy speaks plain http to us: the public base URL says https, so the
    sign-in cookie is Secure."""
    from tests.auth_helpers import PASSWORD, add_client, add_user, pkce

    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false",
                                    "FHIR_PUBLIC_BASE_URL": "https://dmp.example.org/fhir"})
    try:
        add_client(s, "app", "public", "launch/patient patient/*.rs")
        add_user(s, "pat", "patient", "Patient/p1")
        _, challenge = pkce()
        params = {"response_type": "code", "client_id": "app", "redirect_uri": "http://127.0.0.1:9/callback",
                  "scope": "launch/patient patient/*.rs", "state": "s", "aud": "https://dmp.example.org/fhir",
                  "code_challenge": challenge, "code_challenge_method": "S256"}
        with httpx.Client(base_url=s.base) as browser:
            r = browser.get("/auth/authorize", params=params)
            rid = re.search(r'name="rid" value="([^"]+)"', r.text).group(1)
            r = browser.post("/auth/login", data={"rid": rid, "username": "pat", "password": PASSWORD})
            assert r.status_code == 200, r.text
            cookie = r.headers["set-cookie"]
            assert "fhir_auth_flow=" in cookie and "secure" in cookie.lower() and "httponly" in cookie.lower()
    finally:
        stop_server(s)


def _self_signed(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def test_https_served_directly_with_hsts(ferretdb_uri, tmp_path):
    import os
    import socket
    import ssl
    import sys

    from tests.conftest import ROOT

    certfile, keyfile = _self_signed(tmp_path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    env = {**os.environ, "FHIR_MONGODB_URI": ferretdb_uri, "FHIR_DATABASE": "t_" + uuid.uuid4().hex[:12],
           "FHIR_SSL_CERTFILE": str(certfile), "FHIR_SSL_KEYFILE": str(keyfile), "FHIR_HSTS_SECONDS": "31536000",
           "FHIR_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--fd", str(sock.fileno())],
                            pass_fds=(sock.fileno(),), env=env, cwd=ROOT)
    sock.close()
    try:
        ctx = ssl.create_default_context(cafile=str(certfile))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=60) as c:
            r = c.get("/ready")
            assert r.status_code == 200
            assert r.headers["strict-transport-security"] == "max-age=31536000"
            assert c.get("/fhir/.well-known/smart-configuration").json()["issuer"].startswith("https://127.0.0.1:")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)  # plain http is not served
    finally:
        proc.terminate()
        proc.wait(15)


# --- connections (item 7) ------------------------------------------------------------------------

def test_half_open_requests_are_closed_and_slow_bodies_are_408(ferretdb_uri):
    """A client that never finishes its request headers loses the connection (uvicorn alone kept
    it forever); a body that does not arrive in time is 408. The socket timeouts only guard the test."""
    import socket
    from urllib.parse import urlsplit

    s = start_server(ferretdb_uri, {"FHIR_HEADER_TIMEOUT_SECONDS": "0.5", "FHIR_BODY_TIMEOUT_SECONDS": "0.5"})
    try:
        port = urlsplit(s.base).port
        half = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(20)]
        for conn in half:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for conn in half:
            assert conn.recv(1024) == b""  # closed by the server, without a response
            conn.close()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST /fhir/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
            reply = conn.recv(65536)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert httpx.get(s.base + "/health").status_code == 200  # and the server still serves
    finally:
        stop_server(s)


# --- CORS (item 10) --------------------------------------------------------------------------------

def test_cors_is_configuration(server, ferretdb_uri):
    app_origin = "https://app.example"
    preflight = {"Origin": app_origin, "Access-Control-Request-Method": "PUT",
                 "Access-Control-Request-Headers": "authorization, content-type, if-match, prefer"}
    r = httpx.get(server.fhir_base + "/metadata", headers={"Origin": app_origin})
    assert "access-control-allow-origin" not in r.headers  # none by default
    s = start_server(ferretdb_uri, {"FHIR_CORS_ORIGINS": app_origin})
    try:
        r = httpx.options(s.fhir_base + "/Patient/x", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == app_origin
        allowed = r.headers["access-control-allow-headers"].lower()
        assert all(h in allowed for h in ("authorization", "content-type", "if-match", "prefer"))
        assert "PUT" in r.headers["access-control-allow-methods"]
        created = httpx.post(s.fhir_base + "/Patient", json=patient(),
                             headers={"Origin": app_origin, "Content-Type": "application/fhir+json"})
        assert created.status_code == 201 and created.headers["access-control-allow-origin"] == app_origin
        exposed = created.headers["access-control-expose-headers"].lower()
        assert all(h in exposed for h in ("etag", "location", "content-location", "last-modified"))
        r = httpx.options(s.fhir_base + "/Patient/x", headers={**preflight, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    finally:
        stop_server(s)
