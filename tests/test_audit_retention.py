"""Audit retention (issue 10, item 7): kept forever unless FHIR_AUDIT_RETENTION_DAYS is set; then
`fhir-server audit purge` deletes older AuditEvents, and `AuditEvent/$verify` still verifies the
chains (a checkpoint, itself recorded in a hash-chained AuditEvent, says where each pruned chain now
starts) while deletions without a checkpoint, or an edited checkpoint, are still reported."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from pymongo import MongoClient

from tests.conftest import ROOT
from tests.consent_world import FHIR
from tests.inprocess import InProcessServer


def _purge(srv, days: str | None, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FHIR_MONGODB_URI": srv.mongodb_uri, "FHIR_DATABASE": srv.database, "FHIR_LOG_LEVEL": "WARNING"}
    env.pop("FHIR_AUDIT_RETENTION_DAYS", None)
    if days is not None:
        env["FHIR_AUDIT_RETENTION_DAYS"] = days
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", "audit", "purge", *extra], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _problems(srv) -> list[str]:
    with srv.client() as c:
        r = c.get("/AuditEvent/$verify")
    assert r.status_code == 200, r.text
    return [i["diagnostics"] for i in r.json()["issue"] if i["severity"] == "error"]


def test_purge_keeps_the_chains_verifiable_and_tampering_still_shows(ferretdb_uri):
    with InProcessServer(ferretdb_uri, insecure=True) as srv:
        with srv.client() as c:
            pid = c.post("/Patient", json={"resourceType": "Patient"}, headers=FHIR).json()["id"]
            for _ in range(8):
                assert c.get(f"/Patient/{pid}").status_code == 200
        client: MongoClient = MongoClient(ferretdb_uri)
        coll = client[srv.database]["AuditEvent"]
        chain = max(coll.distinct("_ac"), key=lambda ch: coll.count_documents({"_ac": ch}))
        total = coll.count_documents({})
        # the first five records of the server's chain are 40 days old (only the storage time moves:
        # it is not part of the hash)
        coll.update_many({"_ac": chain, "_as": {"$lt": 5}},
                         {"$set": {"_lu": datetime.now(UTC) - timedelta(days=40)}})

        done = _purge(srv, None)  # the default: forever
        assert done.returncode == 0 and "nothing purged" in done.stdout
        assert coll.count_documents({}) == total
        done = _purge(srv, "30", "--dry-run")
        assert done.returncode == 0 and "would delete 5 in 1 chain" in done.stdout, done.stdout + done.stderr
        assert coll.count_documents({}) == total
        done = _purge(srv, "30")
        assert done.returncode == 0 and "deleted 5 in 1 chain" in done.stdout, done.stdout + done.stderr
        assert coll.count_documents({"_ac": chain, "_as": {"$lt": 5}}) == 0
        assert coll.count_documents({"_ac": chain}) > 0
        assert _problems(srv) == []
        with srv.client() as c:  # the server's chain goes on after the checkpoint
            assert c.get(f"/Patient/{pid}").status_code == 200
        assert _problems(srv) == []
        assert _purge(srv, "30").stdout.strip().endswith("deleted 0 in 0 chain(s)")  # nothing older left

        # deleting the next record without a checkpoint is still a removal
        victim = coll.find_one({"_ac": chain, "_as": 5})
        coll.delete_one({"_id": victim["_id"]})
        [problem] = _problems(srv)
        assert "removed: record 5 is missing" in problem, problem
        coll.insert_one(victim)
        assert _problems(srv) == []
        # moving the checkpoint forward to hide a deletion is seen: it no longer matches its AuditEvent
        checkpoints = client[srv.database]["audit_checkpoints"]
        cp = checkpoints.find_one({"_id": "pruned"})
        coll.delete_one({"_id": victim["_id"]})
        checkpoints.update_one({"_id": "pruned"}, {"$set": {f"chains.{chain}": [6, coll.find_one(
            {"_ac": chain, "_as": 6})["_ap"]]}})
        problems = _problems(srv)
        assert any("pruning checkpoints differ" in p for p in problems), problems
        checkpoints.replace_one({"_id": "pruned"}, cp)
        coll.insert_one(victim)
        assert _problems(srv) == []
        client.close()
