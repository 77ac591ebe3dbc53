"""The consent epoch: a counter bumped after every change that can alter an access decision
(a Consent, a Patient's general practitioner, a PractitionerRole), read once per interaction, so
that each worker may keep what it learnt about patients' consents in memory and still see a change
on the very next request.

Three kinds, chosen by `FHIR_CONSENT_CACHE` (config.py):

* `host` — an 8-byte counter in a file mapped into memory by every worker of one `fhir-server
  serve` (the parent creates it before uvicorn starts the workers and passes its path in the
  environment). Reading it costs nanoseconds. Exact when this server is the only writer of its
  database: the embedded engine (one server per data directory) or a single-host deployment.
* `database` — a document `{_id: "consent", n}` in `_epochs`, set to a new random value on change and
  read once per interaction (one `_id` read): exact across hosts (several servers on one cluster).
* `off` — no cache: every interaction reads the Consents it needs.

The counter is bumped *after* the change is durable (after a transaction's commit), and a worker
tags what it caches with the value it read *before* loading, so a load racing with a change is
dropped at the next read of the counter. Crash windows (a change made, its bump lost with the
process) are closed by bumping at every worker start and by a maximum cache age.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import struct
import tempfile
from pathlib import Path

from pymongo.errors import DuplicateKeyError

ENV_FILE = "FHIR_CONSENT_EPOCH_FILE"
_COUNTER = struct.Struct("<Q")


def create_host_file() -> str:
    """A fresh counter file for one server's workers (in shared memory where the OS has it)."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="fhir-consent-epoch-", dir=folder)
    os.write(fd, _COUNTER.pack(0))
    os.close(fd)
    return path


class HostEpoch:
    def __init__(self, path: str | None = None) -> None:
        self.owned = path is None
        self.path = path or create_host_file()
        self._fd = os.open(self.path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, _COUNTER.size)

    async def current(self) -> int:
        return _COUNTER.unpack_from(self._map, 0)[0]  # a torn read only differs: a spurious reload

    async def bump(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _COUNTER.pack_into(self._map, 0, (_COUNTER.unpack_from(self._map, 0)[0] + 1) % 2**63)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
        if self.owned:
            Path(self.path).unlink(missing_ok=True)


class DatabaseEpoch:
    def __init__(self, db) -> None:
        self.col = db["_epochs"]

    async def current(self) -> int:
        doc = await self.col.find_one({"_id": "consent"})
        return int(doc["n"]) if doc else 0

    async def bump(self) -> None:
        # A new random value rather than `$inc`: the epoch only has to change, and FerretDB v1's `$inc`
        # is not atomic (two concurrent bumps could leave one value). Two first bumps may both try to
        # insert the document: the loser's duplicate key means it exists now, so set it again.
        for _ in range(3):
            try:
                await self.col.update_one({"_id": "consent"}, {"$set": {"n": secrets.randbits(62)}}, upsert=True)
                return
            except DuplicateKeyError:
                continue

    def close(self) -> None:
        return None


class NoEpoch:
    """Caching off: every interaction sees a new epoch."""

    def __init__(self) -> None:
        self.n = 0

    async def current(self) -> int:
        self.n += 1
        return self.n

    async def bump(self) -> None:
        return None

    def close(self) -> None:
        return None
