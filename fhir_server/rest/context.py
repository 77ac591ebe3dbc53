"""Per-process services and per-request context passed to every handler."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fhir_server.access.decision import AccessDecisionPoint, Principal
from fhir_server.config import Settings
from fhir_server.engine.capabilities import EngineCapabilities
from fhir_server.storage.repository import Repository


@dataclass(slots=True)
class Services:
    settings: Settings
    repository: Repository
    engine: EngineCapabilities
    access: AccessDecisionPoint
    auth: object | None = None  # fhir_server.auth.server.AuthServer


@dataclass(slots=True)
class RequestContext:
    services: Services
    base_url: str  # absolute FHIR base, no trailing slash
    principal: Principal
    request_id: str
    session: object | None = None  # a MongoDB session inside a transaction Bundle
    in_bundle: bool = False

    @property
    def repo(self) -> Repository:
        return self.services.repository

    def in_transaction(self, session) -> RequestContext:
        return replace(self, session=session, in_bundle=True)

    def url(self, *parts: str) -> str:
        return "/".join([self.base_url, *parts])
