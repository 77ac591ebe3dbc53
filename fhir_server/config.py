"""Configuration from the environment (prefix FHIR_) or a `.env` file, via pydantic-settings."""

from __future__ import annotations

import re
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
    max_resource_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=12 * 1024 * 1024,
        description="Largest resource stored (its JSON, without a Binary's content, which goes to GridFS); "
                    "MongoDB documents hold at most 16 MB with the index fields")
    search_max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest POST [type]/_search form body")
    audit: bool = Field(True, description="BENCHMARK ONLY: false stops writing the audit trail (bench/audit.py "
                                          "measures its cost); a deployment never turns it off")
    provenance: bool = Field(True, description="BENCHMARK ONLY: false stops recording a Provenance with each write "
                                               "(bench/provenance.py measures its cost); a deployment never turns it off")
    audit_retention_days: int | None = Field(None, ge=1, description="How long AuditEvents are kept; unset: forever "
                                                                     "(nothing is ever deleted). Set, `fhir-server "
                                                                     "audit purge` deletes older ones")
    max_bundle_entries: int = Field(1000, ge=1, description="Most entries in a batch or transaction Bundle")
    cpu_threads: int = Field(2, ge=1, description="Threads per worker for CPU-heavy work (large bodies, argon2)")
    cpu_max_waiting: int = Field(32, ge=0, description="CPU-heavy calls that may wait for a thread; more: 503")
    cpu_processes: int = Field(1, ge=1, description="Worker processes per server worker that parse and validate "
                                                    "large request bodies")
    client_max_large_requests: int = Field(2, ge=1, description="Requests with a body over 64 KiB (or of unknown "
                                                                "length) one client may have in flight per worker; "
                                                                "more: 429 before the body is read")
    cpu_nice: int = Field(10, ge=0, le=19, description="How much lower the CPU priority of that work is than the "
                                                       "event loop's (nice increment)")
    binary_inline_max_bytes: int = Field(
        256 * 1024, description="Binary content above this size is kept in GridFS and streamed"
    )
    default_page_size: int = Field(50, ge=1)
    max_page_size: int = Field(1000, ge=1, description="Largest page; a larger _count is lowered to it")
    # what one search may ask (over a cap: 400 too-costly; docs/decisions.md "Hardening")
    search_max_params: int = Field(64, ge=1, description="Search parameters (criteria) per search")
    search_max_values: int = Field(500, ge=1, description="Values (ORed by commas) in all parameters of a search")
    search_max_chain_depth: int = Field(4, ge=1, le=4, description="Chain links (and _has levels) in one parameter")
    search_max_has_depth: int = Field(2, ge=1, le=4, description="Nested _has levels in one parameter")
    search_max_includes: int = Field(10, ge=0, description="_include plus _revinclude parameters per search")
    db_time_budget_ms: float = Field(
        10000, gt=0, description="Database time one read, search or history may use (MongoDB maxTimeMS through "
                                 "PyMongo's timeout()); over it: 503 too-costly")
    log_level: str = Field("INFO")
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses of reverse proxies whose X-Forwarded-For/-Proto are believed "
                        "(uvicorn forwarded_allow_ips); empty: none, the peer address is the client's")
    header_timeout_seconds: float = Field(10, gt=0, description="A connection whose request headers are not "
                                                                 "complete this long after it began is closed")
    body_timeout_seconds: float = Field(60, gt=0, description="Time to send a whole request body (408 beyond)")
    keep_alive_timeout_seconds: int = Field(5, ge=1, description="Idle keep-alive connections are closed after this")
    limit_concurrency: int | None = Field(
        1000, ge=1, description="Connections or tasks per worker beyond which uvicorn answers 503")
    # bulk export (FHIR Bulk Data Access v2; README "Bulk export"; fhir_server/records/export.py)
    export_retention_seconds: float = Field(
        3600, gt=0, description="How long a finished export's files stay downloadable; then they are deleted "
                                "(their URLs answer 410 to the owner)")
    export_file_max_resources: int = Field(
        10000, ge=1, description="Resources per output file (a type with more gets several files); also the unit "
                                 "of progress a job resumes from after a crash")
    export_page_size: int = Field(500, ge=1, le=5000, description="Resources read per database round trip")
    export_lease_seconds: float = Field(
        30, gt=0, description="A worker running an export renews its lease at each file; a job whose lease "
                              "expired (its worker died) is resumed by another")
    export_poll_seconds: float = Field(2, gt=0, description="How often each worker looks for export jobs to run "
                                                           "or expire")
    export_runner: bool = Field(True, description="Run export jobs in this process (false: only accept them)")
    test_export_crash_after_part: int | None = Field(
        None, description="Tests only: exit the process right after recording the N-th part of an export")
    destruction_grace_seconds: int = Field(
        30 * 86400, ge=0, description="After a record is closed, how long the patient keeps their copy before an "
                                      "administrator's retention run may destroy it (the patient's own request "
                                      "destroys it at once)")
    test_destruction_crash_after: int | None = Field(
        None, description="Tests only: exit the process at the N-th removal step of a record's destruction")
    test_crash_after_step: int | None = Field(
        None, description="Tests only: exit the process at the N-th write or commit step (crash injection)")

    cors_origins: str = Field(
        "", description="Origins of browser apps allowed by CORS (comma-separated; '*' for any); empty: none")
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token that /metrics requires; unset: /metrics is not served")
    hsts_seconds: int = Field(0, ge=0, description="Strict-Transport-Security max-age on https responses (0: none)")
    ssl_certfile: Path | None = Field(None, description="Serve HTTPS directly: the certificate chain (PEM)")
    ssl_keyfile: Path | None = Field(None, description="… and its private key (PEM)")
    ssl_keyfile_password: SecretStr | None = Field(None, description="… and the key's password, if any")
    allowed_hosts: str = Field(
        "127.0.0.1,localhost,::1", description="Without FHIR_PUBLIC_BASE_URL, the Host names served (comma-separated; "
                                               "'*': any); other Hosts get 400")
    development: bool = Field(
        False, description="Development conveniences that are unsafe elsewhere (http jwks_uri of clients, "
                           "any Host header deciding the published URLs)")

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
    login_max_failures: int = Field(5, ge=1, description="Sign-in attempts per user name and window before "
                                                         "throttling (a success forgives)")
    client_max_failures: int = Field(10, ge=1, description="client_secret checks per client id and window")
    address_max_attempts: int = Field(
        200, ge=1, description="Secret checks (sign-ins, client secrets) per client address and window; high, "
                               "because a hospital's users may share one NAT address")
    # patient consent (README "Patient control"; fhir_server/access/consent.py)
    consent_default_policy: Literal["deny-except-btg", "deny"] = Field(
        "deny-except-btg", description="What applies when no Consent of the patient speaks for a professional "
                                       "(IHE PCF implicit option): deny, except break-glass; or deny always")
    consent_cache: Literal["auto", "host", "database", "off"] = Field(
        "auto", description="How workers keep patients' consents in memory and learn of changes at once: host "
                            "(shared memory; one server per database: the embedded engine), database (a counter "
                            "read per request; several servers on one cluster), off (read per request). auto: "
                            "host when `serve` started the embedded engine, else database")
    break_glass_seconds: int = Field(4 * 3600, ge=60, description="How long an emergency (break-glass) access "
                                                                  "declared for one patient lasts")
    login_throttle_window_seconds: int = Field(900, ge=1, description="Throttling window for secret checks")

    def redacted(self) -> dict:
        out = self.model_dump(mode="json")
        if self.mongodb_uri is not None:
            out["mongodb_uri"] = _redact_uri(self.mongodb_uri.get_secret_value())
        return out


_SECRET_OPTION = re.compile(r"pass|secret|token|key|credential|authmechanismproperties", re.IGNORECASE)


def _redact_uri(uri: str) -> str:
    """The URI without its user info, and without the values of options that may carry secrets
    (`tlsCertificateKeyFilePassword`, `authMechanismProperties=AWS_SESSION_TOKEN:…`)."""
    scheme, sep, rest = uri.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    hosts, q, query = (authority + path).partition("?")
    if q:
        parts = []
        for part in query.split("&"):
            name, eq, _ = part.partition("=")
            parts.append(f"{name}=***" if eq and _SECRET_OPTION.search(name) else part)
        query = "&".join(parts)
    return scheme + sep + hosts + q + query
