"""The embedded default engine: a FerretDB v1 process on SQLite, supervised by the CLI.

Started on a loopback port, health-checked with a real `ping` over the wire protocol, and stopped
(SIGTERM, then SIGKILL) when the server stops. Telemetry is off: these machines have no network,
and a medical record server should not phone home.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError


def _die_with_parent() -> None:
    """Linux: have the kernel SIGTERM FerretDB if the server dies without stopping it (e.g. SIGKILL)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedFerretDB:
    def __init__(self, binary: Path, data_dir: Path, port: int = 0, handler: str = "sqlite",
                 postgresql_url: str | None = None) -> None:
        self.binary = Path(binary)
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.handler = handler
        self.postgresql_url = postgresql_url
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        state = self.data_dir / "state"
        cmd = [str(self.binary), f"--handler={self.handler}", f"--listen-addr=127.0.0.1:{self.port}",
               "--telemetry=disable", "--debug-addr=-", f"--state-dir={state}", "--log-level=warn",
               "--log-format=json"]
        if self.handler == "sqlite":
            cmd.append(f"--sqlite-url=file:{(self.data_dir / 'sqlite').resolve()}/")
        else:
            cmd.append(f"--postgresql-url={self.postgresql_url}")
        return cmd

    def start(self, timeout: float = 30.0) -> str:
        if not self.binary.exists():
            raise FileNotFoundError(f"FerretDB binary not found at {self.binary}; run `make setup`")
        (self.data_dir / "state").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "sqlite").mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "ferretdb.log", "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**os.environ, "FERRETDB_TELEMETRY": "disable"},
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"FerretDB exited with code {self.process.returncode}; "
                                   f"see {self.data_dir / 'ferretdb.log'}")
            if self.ping():
                return self.uri
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"FerretDB did not answer on port {self.port} within {timeout}s")

    def ping(self) -> bool:
        client: MongoClient[dict[str, Any]]
        try:
            with MongoClient(self.uri, serverSelectionTimeoutMS=300, connectTimeoutMS=300) as client:
                client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
