"""One engine per data directory: who serves it, and where its engine listens.

Two FerretDB processes on one SQLite folder corrupt each other's view of it (each caches which
tables exist: users added by a second engine stay invisible to the first, and the first then
fails with "table … already exists"). So whoever starts the embedded engine — `fhir-server serve`,
or a CLI command when no server runs — first takes an exclusive lock on `<data dir>/engine.lock`
(flock: released by the kernel if the process dies, so a crash leaves no stale lock) and then
publishes the engine's address in `<data dir>/engine.json`. CLI commands that find the lock
held use the published engine instead of starting one; a second `serve` refuses to start.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


class DataDirBusy(Exception):
    """The data directory is held by another process (its description is the message)."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir)
        self._fd: int | None = None

    @property
    def _info_path(self) -> Path:
        return self.dir / "engine.json"

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "engine.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def publish(self, uri: str, role: str) -> None:
        """Tell other commands where the engine listens (written atomically, owner-only)."""
        tmp = self._info_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"uri": uri, "pid": os.getpid(), "role": role}, f)
        os.replace(tmp, self._info_path)

    def holder(self) -> dict | None:
        """What the lock holder published (None if it has not published yet)."""
        try:
            info = json.loads(self._info_path.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and isinstance(info.get("uri"), str) else None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self._info_path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def describe_holder(self) -> str:
        info = self.holder()
        if info is None:
            return f"another process is starting the engine of data directory {self.dir}; try again in a moment"
        who = "a running fhir-server" if info.get("role") == "server" else "another fhir-server command"
        return f"{who} (pid {info.get('pid')}) uses data directory {self.dir}"
