"""The published profiles (profiles/) and the server agree.

A corpus of valid and invalid resources (tests/profile_corpus/, one file each: the profile, the
expected verdict, why, and the resource) is judged twice: by the server (`POST [type]/$validate`)
and by the HAPI FHIR validator with profiles/ loaded (tools/hapi-validator, Java, offline, one JVM
for the whole corpus). Both must give the entry's verdict, and HAPI must fail for the entry's rule
(`hapi_says`: a constraint key or element), not for some other reason.

Divergences are explicit, never silent:
* `server_only`: a rule no profile can express (it depends on what is stored). Both validators
  accept the resource; the entry names the interaction that shows the server's rule (`create`, or
  `create-twice`) and the status it answers.
* `profile_only`: the profile is stricter than the server (it publishes the preferred form). The
  server accepts, HAPI refuses.

Also: the profiles are served read-only exactly as committed, listed in the CapabilityStatement,
readable by any authenticated caller; and (only when FHIR_TEST_REGENERATE_PROFILES=1, since it
takes a JVM start) the committed files are what tools/gen_profiles.py generates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.auth_helpers import add_client, backend_token, public_jwks, rsa_key
from tests.helpers import JSON_HEADERS

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
CORPUS = Path(__file__).resolve().parent / "profile_corpus"
VALIDATOR = ROOT / ".tools" / "hapi-validator" / "lib"
BASE = "urn:fhir-dmp:StructureDefinition/"
ENTRIES = {p.stem: json.loads(p.read_text()) for p in sorted(CORPUS.glob("*.json"))}
DEFINITIONS = {p.stem: json.loads(p.read_text()) for p in sorted(PROFILES.glob("*.json"))}


def run_hapi(cases: list[dict]) -> dict[str, dict]:
    if not VALIDATOR.is_dir():
        pytest.fail(f"the HAPI FHIR validator is not built ({VALIDATOR}); run `make setup`")
    done = subprocess.run(["java", "-cp", f"{VALIDATOR}/*", "fhirdmp.Main", "validate", str(PROFILES)],
                          input=json.dumps(cases), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {r["id"]: r for r in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def hapi() -> dict[str, dict]:
    """HAPI's verdict on every corpus entry, against the entry's profile."""
    return run_hapi([{"id": name, "profile": BASE + e["profile"], "resource": e["resource"]}
                     for name, e in ENTRIES.items()])


def server_verdict(fhir, resource: dict) -> tuple[bool, list[dict]]:
    r = fhir.post(f"/{resource['resourceType']}/$validate", json=resource, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    issues = r.json()["issue"]
    return all(i["severity"] in ("information", "warning") for i in issues), issues


def test_the_corpus_covers_each_profile_both_ways():
    assert len(ENTRIES) >= 25
    seen = Counter((e["profile"], e["expect"]) for e in ENTRIES.values())
    for sd in DEFINITIONS.values():
        assert seen[(sd["name"], "valid")] and seen[(sd["name"], "invalid")], sd["name"]
    for name, e in ENTRIES.items():
        assert e["expect"] in ("valid", "invalid") and e["because"], name
        assert e["expect"] == "valid" or e.get("hapi_says"), f"{name}: an invalid entry names the rule HAPI breaks"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_server_and_hapi_agree(fhir, hapi, name):
    entry = ENTRIES[name]
    resource = entry["resource"]
    by_server, server_issues = server_verdict(fhir, resource)
    result = hapi[name]
    errors = [f"{i['location']}: {i['message']}" for i in result["issues"] if i["severity"] in ("error", "fatal")]
    assert result["valid"] == (not errors)
    expected = entry["expect"] == "valid"
    assert by_server == expected, f"server: {server_issues}"
    if "profile_only" in entry:  # the profile is stricter than the server, on purpose
        assert expected and not result["valid"], f"{name}: the profile no longer refuses; drop profile_only"
    else:
        assert result["valid"] == expected, f"HAPI: {errors}"
    if not result["valid"] and entry.get("hapi_says"):
        assert any(entry["hapi_says"] in e for e in errors), f"HAPI refused for another reason: {errors}"
    if "server_only" in entry:
        rule = entry["server_only"]
        assert expected and result["valid"], "a server-only rule is one both validators cannot see"
        url = f"/{resource['resourceType']}"
        if rule["check"] == "create-twice":
            first = fhir.post(url, json=resource, headers=JSON_HEADERS)
            assert first.status_code == 201, first.text
        else:
            assert rule["check"] == "create"
        refused = fhir.post(url, json=resource, headers=JSON_HEADERS)
        assert refused.status_code == rule["status"], refused.text


def test_profiles_are_r4_constraints_with_snapshots():
    assert set(DEFINITIONS) == {"dmp-patient", "dmp-practitioner", "dmp-record-consent", "dmp-authorization-consent",
                                "dmp-document-reference"}
    for sid, sd in DEFINITIONS.items():
        assert sd["id"] == sid and sd["url"] == BASE + sd["name"]
        assert (sd["status"], sd["fhirVersion"], sd["derivation"]) == ("active", "4.0.1", "constraint")
        snapshot_ids = {e["id"] for e in sd["snapshot"]["element"]}
        assert {e["id"] for e in sd["differential"]["element"]} <= snapshot_ids


def test_profiles_are_served_read_only(fhir):
    for sid, sd in DEFINITIONS.items():
        r = fhir.get(f"/StructureDefinition/{sid}")
        assert r.status_code == 200 and r.json() == sd
        found = fhir.get("/StructureDefinition", params={"url": sd["url"]}).json()
        assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == sid
        assert found["entry"][0]["fullUrl"].endswith(f"/StructureDefinition/{sid}")
    everything = fhir.get("/StructureDefinition").json()
    assert everything["type"] == "searchset" and everything["total"] == len(DEFINITIONS)
    assert fhir.get("/StructureDefinition", params={"url": BASE + "DMPPatient|0.1.0"}).json()["total"] == 1
    assert fhir.get("/StructureDefinition", params={"url": BASE + "DMPPatient|9"}).json()["total"] == 0
    assert fhir.get("/StructureDefinition", params={"type": "Consent"}).json()["total"] == 2
    assert fhir.get("/StructureDefinition", params={"publisher": "x"}).status_code == 400
    assert fhir.get("/StructureDefinition/no-such-profile").status_code == 404
    sd = DEFINITIONS["dmp-patient"]
    for method, path in (("POST", "/StructureDefinition"), ("PUT", "/StructureDefinition/dmp-patient"),
                         ("DELETE", "/StructureDefinition/dmp-patient"), ("PATCH", "/StructureDefinition/dmp-patient")):
        r = fhir.request(method, path, json=sd, headers=JSON_HEADERS)
        assert r.status_code == 405 and r.headers["allow"] == "GET", (method, r.text)
    assert fhir.get("/StructureDefinition/dmp-patient").json() == sd  # unchanged


def test_capability_statement_lists_the_profiles(fhir):
    resources = {r["type"]: r for r in fhir.get("/metadata").json()["rest"][0]["resource"]}
    by_type: dict[str, set[str]] = {}
    for sd in DEFINITIONS.values():
        by_type.setdefault(sd["type"], set()).add(sd["url"])
    for rtype, urls in by_type.items():
        assert set(resources[rtype]["supportedProfile"]) == urls
    assert {i["code"] for i in resources["StructureDefinition"]["interaction"]} == {"read", "search-type"}


def test_any_authenticated_caller_reads_the_profiles(auth_world):
    server = auth_world.server
    key = rsa_key()
    add_client(server, "profile-reader", "confidential-asymmetric", "system/AuditEvent.c", redirect_uris=(),
               jwks=public_jwks(key))
    token = backend_token(server, "profile-reader", key, "system/AuditEvent.c")["access_token"]
    with httpx.Client(base_url=server.fhir_base, timeout=60) as c:
        assert c.get("/StructureDefinition/dmp-patient").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert c.get("/Patient", headers=auth).status_code == 403  # the token's scopes are narrow…
        r = c.get("/StructureDefinition/dmp-patient", headers=auth)  # …and still read the profiles
        assert r.status_code == 200 and r.json()["url"] == BASE + "DMPPatient"
        assert c.get("/StructureDefinition", headers=auth).json()["total"] == len(DEFINITIONS)


@pytest.mark.skipif(os.environ.get("FHIR_TEST_REGENERATE_PROFILES") != "1",
                    reason="regenerating the snapshots starts a JVM; set FHIR_TEST_REGENERATE_PROFILES=1")
def test_committed_profiles_are_what_the_generator_writes(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_profiles.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for sid, sd in DEFINITIONS.items():
        assert json.loads((tmp_path / f"{sid}.json").read_text()) == sd, f"{sid}: run `make profiles` and commit"
