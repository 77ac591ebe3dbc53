"""Real engines and real server processes for the HTTP-level tests.

Session fixtures start FerretDB (SQLite, temp dir) and mongoeco's wire server (the engine with
multi-document transactions), and a `fhir-server serve` process on each. The server is handed an
already-listening socket (`--fd`), so the first request simply waits in the kernel's backlog until
the app is ready: no polling, no sleeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fhir_server.engine.embedded import EmbeddedEngine

ROOT = Path(__file__).resolve().parent.parent
FERRETDB_BIN = Path(os.environ.get("FERRETDB_BIN", ROOT / ".tools" / "bin" / "ferretdb"))
MONGOECO_PYTHON = Path(os.environ.get("MONGOECO_PYTHON", ROOT / ".tools" / "mongoeco-venv" / "bin" / "python"))
FHIR_JSON = "application/fhir+json"
# Small limits so the tests reach the GridFS and body-size paths with small payloads.
TEST_INLINE_MAX = 4096
TEST_MAX_BODY = 2 * 1024 * 1024
TEST_METRICS_TOKEN = "metrics-test-token"
TEST_MAX_RESOURCE = 1024 * 1024  # below TEST_MAX_BODY, so a large Binary and an oversized resource both fit a body


@pytest.fixture(scope="session")
def ferretdb_uri(tmp_path_factory) -> str:
    if not FERRETDB_BIN.exists():
        pytest.fail(f"FerretDB is not built at {FERRETDB_BIN}; run `make setup`")
    # the embedded default: FerretDB on a private PostgreSQL cluster (FHIR_TEST_BACKEND=sqlite: SQLite)
    engine = EmbeddedEngine(FERRETDB_BIN, tmp_path_factory.mktemp("engine"),
                            backend=os.environ.get("FHIR_TEST_BACKEND", "postgresql"))
    uri = engine.start()
    yield uri
    engine.stop()


@pytest.fixture(scope="session")
def mongoeco_uri() -> str:
    if not MONGOECO_PYTHON.exists():
        pytest.fail(f"mongoeco is not installed at {MONGOECO_PYTHON}; run `make setup`")
    proc = subprocess.Popen(
        [str(MONGOECO_PYTHON), str(ROOT / "tests" / "engines" / "mongoeco_wire.py"), "--watch-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    uri = proc.stdout.readline().strip()
    if not uri.startswith("mongodb://"):
        proc.kill()
        pytest.fail("mongoeco wire server did not start")
    yield uri
    proc.stdin.close()
    proc.wait(timeout=15)


@dataclass
class Server:
    process: subprocess.Popen
    base: str  # http://127.0.0.1:PORT
    mongodb_uri: str
    database: str

    @property
    def fhir_base(self) -> str:
        return self.base + "/fhir"

    def client(self, **kwargs) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.fhir_base, headers={"Accept": FHIR_JSON}, **kwargs)


def start_server(mongodb_uri: str, extra_env: dict[str, str] | None = None, stderr=None) -> Server:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    port = sock.getsockname()[1]
    database = "t_" + uuid.uuid4().hex[:12]
    env = {**os.environ, "FHIR_MONGODB_URI": mongodb_uri, "FHIR_DATABASE": database,
           "FHIR_BINARY_INLINE_MAX_BYTES": str(TEST_INLINE_MAX), "FHIR_MAX_BODY_BYTES": str(TEST_MAX_BODY),
           "FHIR_MAX_RESOURCE_BYTES": str(TEST_MAX_RESOURCE),
           "FHIR_METRICS_TOKEN": TEST_METRICS_TOKEN,
           "FHIR_LOG_LEVEL": "WARNING",
           # These servers test FHIR semantics, not authorization: requests without a token get full
           # access. Servers that test authorization pass {"FHIR_INSECURE_DEV_MODE": "false"} (tests/auth_helpers.py).
           "FHIR_INSECURE_DEV_MODE": "true", **(extra_env or {})}
    if "FHIR_PUBLIC_BASE_URL" not in (extra_env or {}):
        env.pop("FHIR_PUBLIC_BASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fhir_server.cli", "serve", "--fd", str(sock.fileno())],
        pass_fds=(sock.fileno(),), env=env, cwd=ROOT, stderr=stderr,
    )
    sock.close()
    server = Server(proc, f"http://127.0.0.1:{port}", mongodb_uri, database)
    with httpx.Client(timeout=60) as c:
        try:
            r = c.get(server.base + "/ready")
        except httpx.HTTPError as exc:
            proc.kill()
            raise RuntimeError(f"server did not start (exit code {proc.poll()})") from exc
        assert r.status_code == 200, r.text
    return server


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(ferretdb_uri) -> Server:
    s = start_server(ferretdb_uri)
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def txn_server(mongoeco_uri) -> Server:
    s = start_server(mongoeco_uri)
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def fhir(server) -> httpx.Client:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def fhir_txn(txn_server) -> httpx.Client:
    with txn_server.client() as c:
        yield c


@pytest.fixture(params=["ferretdb", "mongoeco"])
def any_fhir(request) -> httpx.Client:
    """The same test against both engines."""
    return request.getfixturevalue("fhir" if request.param == "ferretdb" else "fhir_txn")


@pytest.fixture(scope="session")
def auth_world(ferretdb_uri):
    """A server that enforces SMART authorization (no insecure mode), with users, clients and data."""
    from tests.auth_world import build_world

    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false"})
    try:
        yield build_world(s)
    finally:
        stop_server(s)


@pytest.fixture(scope="session")
def consent_world(ferretdb_uri):
    """A server (two workers) enforcing SMART scopes and patient consent, with records, consents,
    professionals and clients (tests/consent_world.py)."""
    from tests.consent_world import build_consent_world

    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_WORKERS": "2", "FHIR_CONSENT_CACHE": "host",
                                    "FHIR_EXPORT_POLL_SECONDS": "1"})
    try:
        yield build_consent_world(s)
    finally:
        stop_server(s)
