"""Observers of the request pipeline at fixed points (started, disclosed, written, finished).

In the spirit of HAPI FHIR's consent and audit interceptors, which the pipeline calls at fixed
points rather than endpoints calling them: the dispatcher reports `started` and `finished` for
every interaction (each Bundle entry included), and `Records` reports what it `disclosed` (every
resource version about to be returned), `written` (every version it stored, with the one it
replaced) and `concerned` (the patients whose record a refused interaction was about: their
access history shows the attempt). Audit (IHE BALP) and provenance plug in here; each method is awaited before the
response is sent, so a hook that must be durable (an AuditEvent) can be.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
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

    async def disclosed_refs(self, event: Event, refs: Sequence[tuple[str | None, str]]) -> None:
        """Disclosed versions known only by reference: (patient id or None, "Type/id/_history/v"), for
        content that leaves without passing through `Records` as versions (a bulk export's files)."""
        return None

    async def written(self, event: Event, before: Version | None, after: Version | None) -> None:
        return None

    async def concerned(self, event: Event, patients: AbstractSet[str]) -> None:
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

    async def disclosed_refs(self, event: Event, refs: Sequence[tuple[str | None, str]]) -> None:
        if refs:
            for h in self.hooks:
                await h.disclosed_refs(event, refs)

    async def written(self, event: Event, before: Version | None, after: Version | None) -> None:
        for h in self.hooks:
            await h.written(event, before, after)

    async def concerned(self, event: Event, patients: AbstractSet[str]) -> None:
        if patients:
            for h in self.hooks:
                await h.concerned(event, patients)

    async def finished(self, event: Event, status: int, error: FhirError | None) -> None:
        for h in self.hooks:
            await h.finished(event, status, error)
