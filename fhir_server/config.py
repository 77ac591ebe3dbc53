"""Configuration from the environment (prefix FHIR_) or a `.env` file, via pydantic-settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    profiles_dir: Path | None = Field(
        None, description="The published profiles (StructureDefinitions) served read-only; default: profiles/ of "
                          "the checkout")
    ferretdb_port: int = Field(0, description="Embedded FerretDB port (0: pick a free one)")
    embedded_backend: Literal["postgresql", "sqlite"] = Field(
        "postgresql", description="Storage of the embedded FerretDB: a private PostgreSQL cluster (indexed "
                                  "searches) or SQLite (lighter; searches scan)")
    max_body_bytes: int = Field(32 * 1024 * 1024, description="Largest request body accepted")
    binary_inline_max_bytes: int = Field(
        256 * 1024, description="Binary content above this size is kept in GridFS and streamed"
    )
    default_page_size: int = Field(50, ge=1)
    max_page_size: int = Field(1000, ge=1)
    log_level: str = Field("INFO")
    test_crash_after_step: int | None = Field(
        None, description="Tests only: exit the process at the N-th write or commit step (crash injection)")

    # authorization (SMART App Launch; README "Authorization")
    insecure_dev_mode: bool = Field(
        False, description="Serve requests without a token with full access. Development only; never by default."
    )
    access_token_seconds: int = Field(3600, ge=60, description="Lifetime of access tokens issued to apps")
    backend_token_seconds: int = Field(300, ge=30, le=300, description="Lifetime of backend-services tokens")
    authorization_code_seconds: int = Field(60, ge=10, le=600, description="Lifetime of authorization codes")
    authorization_request_seconds: int = Field(600, description="Time to sign in and approve an app")
    offline_refresh_seconds: int = Field(90 * 86400, description="Lifetime of offline_access refresh tokens")
    online_refresh_seconds: int = Field(12 * 3600, description="Lifetime of online_access refresh tokens")
    signing_key_rotation_days: int = Field(30, ge=1, description="Age at which the token signing key is replaced")
    revocation_cache_seconds: float = Field(1.0, ge=0, description="How long a worker trusts its revocation list")
    login_max_failures: int = Field(5, ge=1, description="Failed sign-ins per user name before throttling "
                                                         "(four times as many per client address)")
    # patient consent (README "Patient control"; fhir_server/access/consent.py)
    consent_default_policy: Literal["deny-except-btg", "deny"] = Field(
        "deny-except-btg", description="What applies when no Consent of the patient speaks for a professional "
                                       "(IHE PCF implicit option): deny, except break-glass; or deny always")
    break_glass_seconds: int = Field(4 * 3600, ge=60, description="How long an emergency (break-glass) access "
                                                                  "declared for one patient lasts")
    login_throttle_window_seconds: int = Field(900, description="Throttling window for failed sign-ins")

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
