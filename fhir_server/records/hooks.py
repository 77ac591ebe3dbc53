"""Observers of the request pipeline at fixed points (started, disclosed, written, finished).

In the spirit of HAPI FHIR's consent and audit interceptors, which the pipeline calls at fixed
points rather than endpoints calling them: the dispatcher reports `started` and `finished` for
every interaction (each Bundle entry included), and `Records` reports what it `disclosed` (every
resource version about to be returned) and `written` (every version it stored, with the one it
replaced), and what it `refused` (a version the caller asked for by id but may not see). Audit
(IHE BALP) and provenance plug in here; each method is awaited before the response is sent, so a
hook that must be durable (an AuditEvent) can be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fhir_server.auth.principal import Principal
from fhir_server.fhir.interactions import Interaction
from fhir_server.fhir.outcome import FhirError
from fhir_server.storage.documents import Version


@dataclass(slots=True)
class Event:
    """One interaction as the hooks see it."""

    interaction: Interaction
    principal: Principal
    request_id: str
    in_bundle: bool = False


class Hook:
    """Override what you observe; every default does nothing."""

    async def started(self, event: Event) -> None:
        return None

    async def disclosed(self, event: Event, versions: Sequence[Version]) -> None:
        return None

    async def written(self, event: Event, before: Version | None, after: Version | None) -> None:
        return None

    async def refused(self, event: Event, versions: Sequence[Version]) -> None:
        """Versions asked for by id that the caller may not see (never disclosed to them)."""
        return None

    async def finished(self, event: Event, status: int, error: FhirError | None) -> None:
        return None


class Hooks:
    """The configured hooks, called in order; nearly free when there are none."""

    __slots__ = ("hooks",)

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = tuple(hooks)

    async def started(self, event: Event) -> None:
        for h in self.hooks:
            await h.started(event)

    async def disclosed(self, event: Event, versions: Sequence[Version]) -> None:
        if versions:
            for h in self.hooks:
                await h.disclosed(event, versions)

    async def written(self, event: Event, before: Version | None, after: Version | None) -> None:
        for h in self.hooks:
            await h.written(event, before, after)

    async def refused(self, event: Event, versions: Sequence[Version]) -> None:
        if versions:
            for h in self.hooks:
                await h.refused(event, versions)

    async def finished(self, event: Event, status: int, error: FhirError | None) -> None:
        for h in self.hooks:
            await h.finished(event, status, error)
