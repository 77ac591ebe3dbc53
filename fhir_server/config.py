"""Configuration from the environment (prefix FHIR_) or a `.env` file, via pydantic-settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", env_file=".env", extra="ignore")

    mongodb_uri: SecretStr | None = Field(
        None, description="MongoDB URI (production: a replica set). Unset: start the embedded FerretDB."
    )
    database: str = Field("fhir", description="Database name")
    host: str = Field("127.0.0.1", description="Listen address")
    port: int = Field(8080, description="Listen port")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    public_base_url: str | None = Field(
        None, description="Absolute FHIR base URL used in links (default: from the request, + /fhir)"
    )
    data_dir: Path = Field(Path("var"), description="Where the embedded engine keeps its data")
    ferretdb_bin: Path = Field(Path(".tools/bin/ferretdb"), description="Embedded FerretDB binary")
    ferretdb_port: int = Field(0, description="Embedded FerretDB port (0: pick a free one)")
    max_body_bytes: int = Field(32 * 1024 * 1024, description="Largest request body accepted")
    binary_inline_max_bytes: int = Field(
        256 * 1024, description="Binary content above this size is kept in GridFS and streamed"
    )
    default_page_size: int = Field(50, ge=1)
    max_page_size: int = Field(1000, ge=1)
    log_level: str = Field("INFO")

    def redacted(self) -> dict:
        out = self.model_dump(mode="json")
        if self.mongodb_uri is not None:
            out["mongodb_uri"] = _redact_uri(self.mongodb_uri.get_secret_value())
        return out


def _redact_uri(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
