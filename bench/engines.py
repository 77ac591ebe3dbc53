"""The engines the benchmark starts for itself: FerretDB v1 on SQLite (default) or on a throw-away
PostgreSQL cluster, both in a temporary directory, through fhir_server.engine.ferretdb.EmbeddedFerretDB.

PostgreSQL refuses to run as root, so when the benchmark runs as root the cluster is initialised
and started as the `postgres` system user (or `nobody`) with runuser.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fhir_server.engine.ferretdb import EmbeddedFerretDB
from fhir_server.engine.postgres import PostgresCluster

ROOT = Path(__file__).resolve().parent.parent
FERRETDB_BIN = Path(os.environ.get("FERRETDB_BIN", ROOT / ".tools" / "bin" / "ferretdb"))


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
