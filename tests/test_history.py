"""history at instance, type and system level: https://hl7.org/fhir/R4/http.html#history."""

import json
from datetime import datetime

from tests.helpers import JSON_HEADERS, assert_outcome, create, patient


def _walk(client, url, params=None) -> list[dict]:
    entries = []
    bundle = client.get(url, params=params).json()
    pages = 0
    while True:
        pages += 1
        assert bundle["type"] == "history"
        entries += bundle.get("entry", [])
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return entries
        assert pages < 500
        bundle = client.get(nxt[0]).json()


def test_instance_history_newest_first(any_fhir):
    created = create(any_fhir, patient())
    pid = created["id"]
    for gender in ("male", "other", "unknown"):
        any_fhir.put(f"/Patient/{pid}", json=dict(created, gender=gender), headers=JSON_HEADERS)
    bundle = any_fhir.get(f"/Patient/{pid}/_history").json()
    assert bundle["total"] == 4
    versions = [e["resource"]["meta"]["versionId"] for e in bundle["entry"]]
    assert versions == ["4", "3", "2", "1"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PUT", "PUT", "POST"]
    assert bundle["entry"][0]["response"]["etag"] == 'W/"4"'
    assert bundle["entry"][0]["fullUrl"].endswith(f"/Patient/{pid}")


def test_type_history_pages_cover_every_version_once(fhir):
    ids = [create(fhir, {"resourceType": "List", "status": "current", "mode": "working"})["id"] for _ in range(7)]
    for lid in ids[:3]:
        fhir.put(f"/List/{lid}", json={"resourceType": "List", "id": lid, "status": "retired", "mode": "working"},
                 headers=JSON_HEADERS)
    entries = _walk(fhir, "/List/_history", {"_count": "2"})
    keys = [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in entries if "resource" in e]
    assert len(keys) == len(set(keys))
    for lid in ids:
        assert (lid, "1") in keys
    for lid in ids[:3]:
        assert (lid, "2") in keys
    stamps = [e["response"]["lastModified"] for e in entries]
    assert stamps == sorted(stamps, reverse=True)


def test_system_history_merges_types_and_since_filters(fhir):
    a = create(fhir, {"resourceType": "Organization", "name": "Clinique A"})
    since = a["meta"]["lastUpdated"]
    b = create(fhir, {"resourceType": "Practitioner", "name": [{"family": "B"}]})
    entries = _walk(fhir, "/_history", {"_since": since, "_count": "1"})
    urls = [e["fullUrl"] for e in entries]
    assert any(u.endswith(f"/Organization/{a['id']}") for u in urls)
    assert any(u.endswith(f"/Practitioner/{b['id']}") for u in urls)
    for e in entries:
        assert e["response"]["lastModified"] >= since
    assert len(urls) == len(set(zip(urls, [e["response"]["etag"] for e in entries])))


def test_history_parameter_errors(fhir):
    assert_outcome(fhir.get("/_history", params={"_since": "yesterday"}), 400)
    assert_outcome(fhir.get("/_history", params={"_since": "2026-01-01T00:00:00"}), 400)
    assert_outcome(fhir.get("/_history", params={"_count": "-1"}), 400)
    assert_outcome(fhir.get("/_history", params={"_cursor": "!!!"}), 400)
    assert_outcome(fhir.get("/_history", params={"foo": "bar"}), 400)
    assert_outcome(fhir.get("/Patient/does-not-exist/_history"), 404)


def test_history_since_in_future_is_empty(fhir):
    future = datetime(2100, 1, 1).isoformat() + "Z"
    bundle = fhir.get("/Patient/_history", params={"_since": future}).json()
    assert bundle["type"] == "history" and "entry" not in bundle
    assert json.dumps(bundle["link"][0]).find("_since") > 0
