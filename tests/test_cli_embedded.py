"""`fhir-server serve` without FHIR_MONGODB_URI starts, uses and stops its own FerretDB (what `make run` does)."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import FERRETDB_BIN, ROOT, start_server, stop_server


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def test_serve_supervises_embedded_ferretdb(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env.update({"FHIR_DATA_DIR": str(tmp_path / "var"), "FHIR_FERRETDB_BIN": str(FERRETDB_BIN),
                "FHIR_LOG_LEVEL": "WARNING", "FHIR_INSECURE_DEV_MODE": "true"})
    proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--fd", str(sock.fileno())],
                            pass_fds=(sock.fileno(),), env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sock.close()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            assert c.get("/ready").json()["engine"] == "ferretdb"
            r = c.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"},
                       headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 201
        assert (tmp_path / "var" / "ferretdb" / "sqlite").is_dir()
        assert _processes_mentioning(str(tmp_path / "var")), "FerretDB should be running"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "INSECURE DEV MODE" in stderr  # the loud warning
    assert _processes_mentioning(str(tmp_path / "var")) == []  # FerretDB stopped with the server


def test_restart_on_same_database_keeps_data_and_indexes(server, fhir):
    created = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "female"},
                        headers={"Content-Type": "application/fhir+json"}).json()
    second = start_server(server.mongodb_uri, {"FHIR_DATABASE": server.database})
    try:
        with second.client() as c:
            assert c.get(f"/Patient/{created['id']}").json() == created
    finally:
        stop_server(second)


def _cli(env, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", *args], env=env, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_uses_the_running_servers_engine_and_a_second_server_refuses(tmp_path):
    """One engine per data directory: users and clients added while the server runs are seen by
    it at once (no second FerretDB on the same files), a second `serve` on the directory refuses
    with one line, and after the server stops the CLI starts its own engine on the same data."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env.update({"FHIR_DATA_DIR": str(tmp_path / "var"), "FHIR_FERRETDB_BIN": str(FERRETDB_BIN),
                "FHIR_LOG_LEVEL": "WARNING"})
    proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve", "--fd", str(sock.fileno())],
                            pass_fds=(sock.fileno(),), env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sock.close()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            assert c.get("/ready").status_code == 200
            added = _cli(env, "clients", "add", "late-app", "--kind", "public", "--redirect-uri",
                         "http://127.0.0.1:9/cb", "--scope", "openid launch/patient patient/*.rs")
            assert added.returncode == 0, added.stderr
            assert _cli(env, "users", "add", "late-user", "--role", "admin", "--password-stdin",
                        stdin="a long enough password\n").returncode == 0
            page = c.get("/auth/authorize", params={
                "response_type": "code", "client_id": "late-app", "redirect_uri": "http://127.0.0.1:9/cb",
                "scope": "openid launch/patient patient/*.rs", "state": "s", "aud": f"http://127.0.0.1:{port}/fhir",
                "code_challenge": "x" * 43, "code_challenge_method": "S256"})
            assert page.status_code == 200 and "Unknown application" not in page.text
            listed = _cli(env, "users", "list")
            assert listed.returncode == 0 and "late-user" in listed.stdout
            reindexed = _cli(env, "reindex", "--type", "Patient")
            assert reindexed.returncode == 0 and "Patient:" in reindexed.stdout, reindexed.stderr
            second = _cli(env, "serve", "--port", "0")
            assert second.returncode == 2
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and "uses data directory" in lines[0] and "Traceback" not in second.stderr
            assert c.get("/ready").status_code == 200  # the first server is untouched
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    after = _cli(env, "users", "list")  # no server: the command runs its own engine on the same data
    assert after.returncode == 0 and "late-user" in after.stdout, after.stderr
    assert _processes_mentioning(str(tmp_path / "var")) == []


def test_cli_errors_are_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env.update({"FHIR_MONGODB_URI": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300",
                "FHIR_DATA_DIR": str(tmp_path / "var")})
    r = _cli(env, "users", "list")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
