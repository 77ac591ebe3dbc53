"""The per-interaction context passed to every handler.

Handlers reach data only through `ctx.records` (fhir_server/records/), built by the dispatcher for
each interaction; they never see the repository, a database session or the decision point.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fhir_server.auth.principal import Principal
from fhir_server.composition import Services
from fhir_server.config import Settings
from fhir_server.engine.capabilities import EngineCapabilities
from fhir_server.storage.repository import Unit

if TYPE_CHECKING:
    from fhir_server.fhir.interactions import Interaction
    from fhir_server.records.records import Records
    from fhir_server.rest.result import Result


@dataclass(slots=True)
class RequestContext:
    services: Services
    base_url: str  # absolute FHIR base, no trailing slash
    principal: Principal
    request_id: str
    unit: Unit | None = None  # the unit of work (transaction Bundle) this interaction belongs to
    in_bundle: bool = False
    records: Records | None = None  # this interaction's data handle (set by the dispatcher)
    # run another interaction in this context (conditional interactions re-run on the matched id)
    run: Callable[[RequestContext, Interaction], Awaitable[Result]] | None = None

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def engine(self) -> EngineCapabilities:
        return self.services.engine

    @property
    def cursor_key(self) -> bytes:
        return self.services.cursor_key

    @property
    def data(self) -> Records:
        assert self.records is not None, "handlers run through the dispatcher"
        return self.records

    def in_unit(self, unit: Unit) -> RequestContext:
        return replace(self, unit=unit, in_bundle=True)

    def url(self, *parts: str) -> str:
        return "/".join([self.base_url, *parts])
