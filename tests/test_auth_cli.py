"""`fhir-server users …`, `clients …` and `launch` against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tests.conftest import ROOT


def _cli(uri, db, *args, stdin=None):
    env = {**os.environ, "FHIR_MONGODB_URI": uri, "FHIR_DATABASE": db}
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", *args], input=stdin, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_users_clients_and_launch(ferretdb_uri):
    db = "t_cli_" + uuid.uuid4().hex[:8]
    r = _cli(ferretdb_uri, db, "users", "add", "dr.x", "--role", "practitioner", "--fhir-user", "Practitioner/1",
             "--rpps", "10000000009", "--password-stdin", stdin="long enough password\n")
    assert r.returncode == 0, r.stderr
    bad = _cli(ferretdb_uri, db, "users", "add", "dr.y", "--role", "practitioner", "--fhir-user", "Practitioner/2",
               "--password-stdin", stdin="long enough password\n")
    assert bad.returncode == 2 and "RPPS" in bad.stderr
    assert _cli(ferretdb_uri, db, "users", "disable", "dr.x").returncode == 0
    users = [json.loads(line) for line in _cli(ferretdb_uri, db, "users", "list").stdout.splitlines()]
    assert users == [{"username": "dr.x", "role": "practitioner", "fhir_user": "Practitioner/1", "name": "",
                      "rpps": "10000000009", "disabled": True, "break_glass": False}]
    assert "password" not in _cli(ferretdb_uri, db, "users", "list").stdout
    r = _cli(ferretdb_uri, db, "clients", "add", "app1", "--kind", "confidential-symmetric", "--redirect-uri",
             "https://app.example/cb", "--scope", "openid patient/*.rs")
    assert r.returncode == 0 and "client secret (shown once)" in r.stdout
    secret = r.stdout.split("client secret (shown once):", 1)[1].split()[0]
    assert len(secret) >= 32
    short = _cli(ferretdb_uri, db, "clients", "add", "app2", "--kind", "confidential-symmetric", "--redirect-uri",
                 "https://app.example/cb", "--secret", "guessable-secret")
    assert short.returncode == 2 and "at least 32" in short.stderr
    clients = [json.loads(line) for line in _cli(ferretdb_uri, db, "clients", "list").stdout.splitlines()]
    assert clients[0]["client_id"] == "app1" and clients[0]["scopes"] == "openid patient/*.rs"
    assert _cli(ferretdb_uri, db, "clients", "remove", "app1").returncode == 0
    assert _cli(ferretdb_uri, db, "clients", "list").stdout == ""
    launch = _cli(ferretdb_uri, db, "launch", "--patient", "p1")
    assert launch.returncode == 0 and len(launch.stdout.strip()) > 10
