"""The embedded default engine: FerretDB v1 on a private PostgreSQL cluster (its search indexes are
GIN, so searches are index-served), or on SQLite (lighter, scans), both under one data directory."""

from __future__ import annotations

from pathlib import Path

from fhir_server.engine.ferretdb import EmbeddedFerretDB
from fhir_server.engine.postgres import PostgresCluster


class EmbeddedEngine:
    def __init__(self, ferretdb_bin: Path, data_dir: Path, port: int = 0, backend: str = "postgresql") -> None:
        self.backend = backend
        self.pg = PostgresCluster(Path(data_dir) / "postgresql") if backend == "postgresql" else None
        self.ferretdb_bin = Path(ferretdb_bin)
        self.data_dir = Path(data_dir)
        self.port = port
        self.ferret: EmbeddedFerretDB | None = None

    @property
    def uri(self) -> str:
        assert self.ferret is not None
        return self.ferret.uri

    def start(self) -> str:
        if self.pg is not None:
            url = self.pg.start()
            self.ferret = EmbeddedFerretDB(self.ferretdb_bin, self.data_dir / "ferretdb", self.port,
                                           handler="postgresql", postgresql_url=url)
        else:
            self.ferret = EmbeddedFerretDB(self.ferretdb_bin, self.data_dir / "ferretdb", self.port)
        try:
            return self.ferret.start()
        except BaseException:
            self.stop()
            raise

    def describe(self) -> str:
        return f"FerretDB on {'PostgreSQL' if self.pg else 'SQLite'}"

    def stop(self) -> None:
        if self.ferret is not None:
            self.ferret.stop()
        if self.pg is not None:
            self.pg.stop()
