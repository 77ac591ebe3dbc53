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
