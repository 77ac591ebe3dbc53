"""Tells every worker that access decisions may have changed: after an interaction that wrote a
Consent, a Patient (its general practitioner) or a PractitionerRole (a professional's
organizations), the consent epoch is bumped (access/epoch.py).

The bump happens when the whole request has finished — after a transaction Bundle's commit, not at
each of its entries — so no worker can cache, under the new epoch, what it read before the change
was durable.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir_server.fhir.outcome import FhirError
from fhir_server.records.hooks import Event, Hook
from fhir_server.storage.documents import Version

DECISIVE = frozenset({"Consent", "Patient", "PractitionerRole"})


class ConsentChanges(Hook):
    def __init__(self, epoch) -> None:
        self.epoch = epoch
        self._dirty: set[str] = set()  # request ids that wrote something decisive

    async def written(self, event: Event, before: Version | None, after: Version | None) -> None:
        if (after or before) is not None and (after or before).type in DECISIVE:  # type: ignore[union-attr]
            self._dirty.add(event.request_id)

    async def finished(self, event: Event, status: int, error: FhirError | None) -> None:
        if not event.in_bundle and event.request_id in self._dirty:
            self._dirty.discard(event.request_id)
            await self.epoch.bump()

    async def disclosed(self, event: Event, versions: Sequence[Version]) -> None:
        return None
