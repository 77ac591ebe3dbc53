"""The engines the benchmark starts for itself: FerretDB v1 on SQLite (default) or on a throw-away
PostgreSQL cluster, both in a temporary directory, through fhir_server.engine.ferretdb.EmbeddedFerretDB.

PostgreSQL refuses to run as root, so when the benchmark runs as root the cluster is initialised
and started as the `postgres` system user (or `nobody`) with runuser.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from fhir_server.engine.ferretdb import EmbeddedFerretDB, free_port

ROOT = Path(__file__).resolve().parent.parent
FERRETDB_BIN = Path(os.environ.get("FERRETDB_BIN", ROOT / ".tools" / "bin" / "ferretdb"))


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    return None


class PostgresCluster:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.bindir = _pg_bindir()
        self.user: str | None = None
        self.started = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/ferretdb"

    def _as_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def start(self) -> str:
        if self.bindir is None:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                break
            if self.user is None:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
            shutil.chown(self.root, self.user)
            os.chmod(self.root, 0o755)
            for parent in self.root.parents:  # mkdtemp makes 0700 directories: let that user through
                if parent == Path(tempfile.gettempdir()) or parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o711)
        def run(cmd: list[str]) -> None:
            done = subprocess.run(self._as_user(cmd), capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")

        run([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--locale=C", "--no-sync"])
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
             "-t", "60", "-o", opts, "start"])
        self.started = True
        run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "ferretdb"])
        return self.url

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def version(self) -> str:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self) -> None:
        if self.started:
            subprocess.run(self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                          "stop"]), capture_output=True)
            self.started = False


class Engine:
    """FerretDB (+ PostgreSQL when asked for) in `root`; `uri` once started."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = Path(root)
        self.pg: PostgresCluster | None = None
        self.ferret: EmbeddedFerretDB | None = None
        self.uri: str | None = None

    def start(self) -> str:
        if self.kind == "ferretdb-pg":
            pg_root = self.root / "pg"
            pg_root.mkdir(parents=True, exist_ok=True)
            self.pg = PostgresCluster(pg_root)
            url = self.pg.start()
            self.ferret = EmbeddedFerretDB(FERRETDB_BIN, self.root / "ferretdb", handler="postgresql",
                                           postgresql_url=url)
        elif self.kind == "ferretdb-sqlite":
            self.ferret = EmbeddedFerretDB(FERRETDB_BIN, self.root / "ferretdb")
        else:
            raise ValueError(self.kind)
        self.uri = self.ferret.start()
        return self.uri

    @property
    def ferret_pid(self) -> int | None:
        return self.ferret.process.pid if self.ferret and self.ferret.process else None

    @property
    def postgres_pid(self) -> int | None:
        return self.pg.postmaster_pid() if self.pg else None

    def describe(self) -> dict:
        out = {"kind": self.kind, "ferretdb": _ferret_version()}
        if self.pg:
            out["postgresql"] = self.pg.version()
        return out

    def stop(self) -> None:
        if self.ferret:
            self.ferret.stop()
        if self.pg:
            self.pg.stop()


def _ferret_version() -> str:
    try:
        out = subprocess.run([str(FERRETDB_BIN), "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    for line in out.splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return out.strip()[:40]
