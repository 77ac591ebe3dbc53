"""Optimistic concurrency: parallel writers never lose an update (https://hl7.org/fhir/R4/http.html#concurrency)."""

import asyncio

import httpx

from tests.helpers import JSON_HEADERS, create, patient

WRITERS = 12


async def _parallel(base: str, requests) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        return await asyncio.gather(*(client.request(m, url, **kw) for m, url, kw in requests))


def test_parallel_if_match_updates_exactly_one_wins(server, fhir):
    created = create(fhir, patient())
    pid = created["id"]
    reqs = [("PUT", f"/Patient/{pid}", {"json": dict(created, birthDate=f"19{50 + i}-01-01"),
                                         "headers": {**JSON_HEADERS, "If-Match": 'W/"1"'}}) for i in range(WRITERS)]
    responses = asyncio.run(_parallel(server.fhir_base, reqs))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1 and statuses.count(412) == WRITERS - 1, statuses
    history = fhir.get(f"/Patient/{pid}/_history").json()
    assert history["total"] == 2


def test_parallel_blind_updates_all_land_as_distinct_versions(server, fhir):
    created = create(fhir, patient())
    pid = created["id"]
    reqs = [("PUT", f"/Patient/{pid}", {"json": dict(created, birthDate=f"19{50 + i}-01-01"),
                                         "headers": JSON_HEADERS}) for i in range(WRITERS)]
    responses = asyncio.run(_parallel(server.fhir_base, reqs))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    versions = sorted(int(r.json()["meta"]["versionId"]) for r in responses)
    assert versions == list(range(2, WRITERS + 2))
    entries = fhir.get(f"/Patient/{pid}/_history", params={"_count": "100"}).json()["entry"]
    assert [int(e["resource"]["meta"]["versionId"]) for e in entries] == list(range(WRITERS + 1, 0, -1))
    # the current version is the one history says is newest, and every write's body is in history
    current = fhir.get(f"/Patient/{pid}").json()
    assert current == entries[0]["resource"]
    assert {e["resource"]["birthDate"] for e in entries[:-1]} == {r.json()["birthDate"] for r in responses}


def test_parallel_patches_compose(server, fhir):
    created = create(fhir, patient(name=[{"family": "Dupont", "given": ["A"]}]))
    pid = created["id"]
    reqs = [("PATCH", f"/Patient/{pid}", {"content": f'[{{"op":"add","path":"/name/0/given/-","value":"g{i}"}}]',
                                           "headers": {"Content-Type": "application/json-patch+json"}})
            for i in range(WRITERS)]
    responses = asyncio.run(_parallel(server.fhir_base, reqs))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    given = fhir.get(f"/Patient/{pid}").json()["name"][0]["given"]
    assert sorted(given) == sorted(["A"] + [f"g{i}" for i in range(WRITERS)])


def test_parallel_update_as_create_same_id(server, fhir):
    pid = "race-" + created_suffix()
    reqs = [("PUT", f"/Patient/{pid}", {"json": patient(id=pid), "headers": JSON_HEADERS}) for _ in range(WRITERS)]
    responses = asyncio.run(_parallel(server.fhir_base, reqs))
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 1 and statuses.count(200) == WRITERS - 1, statuses
    assert fhir.get(f"/Patient/{pid}/_history").json()["total"] == WRITERS


def created_suffix() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def test_writer_that_died_mid_write_is_rolled_forward(server, fhir):
    """A history version without its current-collection write (the writer crashed) is finished by the next writer."""
    import datetime

    import orjson
    from pymongo import MongoClient

    created = create(fhir, patient())
    pid = created["id"]
    orphan = dict(created, gender="male", meta={"versionId": "2", "lastUpdated": "2026-11-25T00:00:00.000Z"})
    with MongoClient(server.mongodb_uri) as mc:
        mc[server.database]["Patient_history"].insert_one({
            "_id": f"{pid}/2", "_rid": pid, "_v": 2, "_op": "update", "_json": orjson.dumps(orphan),
            "_lu": datetime.datetime.now(datetime.timezone.utc)})
    r = fhir.put(f"/Patient/{pid}", json=dict(created, gender="other"), headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "3"
    versions = fhir.get(f"/Patient/{pid}/_history").json()["entry"]
    assert [(e["resource"]["meta"]["versionId"], e["resource"]["gender"]) for e in versions] == [
        ("3", "other"), ("2", "male"), ("1", "female")]
