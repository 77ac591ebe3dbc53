"""A private PostgreSQL cluster for the embedded engine (FerretDB's PostgreSQL backend).

Initialised once in its data directory (`initdb`), started and stopped with `pg_ctl`, listening
on loopback and on a Unix socket in that directory only, trust authentication for local
connections (nothing else can reach it). PostgreSQL refuses to run as root, so when the server
runs as root the cluster belongs to the `postgres` system user (Debian's package creates it) or
`nobody`, through runuser. Tuned for this workload: `plan_cache_mode=force_custom_plan`, because
FerretDB sends parameterised statements and a generic plan cannot use the GIN search indexes
(docs/benchmarks.md, GIN experiment); and `->` on jsonb costed as what it is here (TUNING_SQL).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from fhir_server.engine.ferretdb import free_port

SETTINGS = ("-c listen_addresses=127.0.0.1 -c plan_cache_mode=force_custom_plan -c shared_buffers=256MB "
            "-c synchronous_commit=on -c max_connections=200")

# FerretDB stores each document as one jsonb value, which PostgreSQL compresses and moves out of line
# (TOAST) past ~2 kB: most FHIR resources. The table itself then holds a few pages of pointers, so a
# sequential scan looks cheap to the planner (cost ~40 for 2,000 patients), which therefore prefers
# it to a GIN index below ~10k rows, while each row's filter `_jsonb -> 'field'` really fetches and
# decompresses the whole document (~10 µs: 20 ms per search at 2,000 patients, measured). Giving
# `->` (jsonb_object_field) the cost of that work makes the planner pick the search indexes at every
# size (2.5 ms instead of 21 ms, same data; docs/benchmarks.md). Function costs live in each database's
# catalog, so this runs on FerretDB's database at every start (idempotent).
TUNING_SQL = "ALTER FUNCTION pg_catalog.jsonb_object_field(jsonb, text) COST 100"


def pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    return None


class PostgresCluster:
    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = Path(root).resolve()
        self.data = self.root / "pgdata"
        self.port = port or free_port()
        self.bindir = pg_bindir()
        self.user: str | None = None
        self.started = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/ferretdb"

    def _as_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(self._as_user(cmd), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}): {done.stderr.strip()[-400:]}")

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            self.user = name
            break
        if self.user is None:
            raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, self.user)
        os.chmod(self.root, 0o700)
        for parent in self.root.parents:  # let that user reach its directory
            if parent == Path("/"):
                break
            mode = os.stat(parent).st_mode
            if mode & 0o011 != 0o011:
                os.chmod(parent, mode | 0o011)

    def start(self) -> str:
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (initdb, pg_ctl); run `make setup`")
        self.root.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E",
                       "UTF8", "--locale=C"])
        stale = self.data / "postmaster.pid"  # a cluster killed with its server: pg_ctl would refuse
        if stale.exists() and not self._alive(stale):
            stale.unlink()
        opts = f"-p {self.port} -k {self.root} {SETTINGS}"
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
                   "-t", "60", "-o", opts, "start"])
        self.started = True
        if fresh:
            self._run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                       "ferretdb"])
        self._run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d",
                   "ferretdb", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", TUNING_SQL])
        return self.url

    @staticmethod
    def _alive(pidfile: Path) -> bool:
        try:
            os.kill(int(pidfile.read_text().split()[0]), 0)
            return True
        except (OSError, ValueError, IndexError):
            return False

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def version(self) -> str:
        assert self.bindir is not None
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self) -> None:
        if self.started and self.bindir is not None:
            subprocess.run(self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                          "stop"]), capture_output=True)
            self.started = False
