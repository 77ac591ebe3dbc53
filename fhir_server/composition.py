"""The composition root: the one place that wires storage, the decision point, policies, hooks
and the authorization server together. Used by the web app (rest/app.py) and the CLI, so both
see the same repository layout and indexes; tests inject policies and hooks through
`create_app(settings, policies=…, hooks=…)`.

Where future concerns plug in (docs/decisions.md, "The request path"): patient consent and
break-glass are `Policy` objects handed to the `AccessDecisionPoint`; audit and provenance are
`Hook` objects handed to `Hooks` (records/audit.py: the BALP audit trail); the Provenance of each
write is not a hook but part of the write itself (records/provenance.py, built here).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from fhir_server.access.audit_readers import AuditReaders
from fhir_server.access.consent import ConsentPolicy
from fhir_server.access.decision import AccessDecisionPoint, Policy
from fhir_server.access.epoch import ENV_FILE, DatabaseEpoch, HostEpoch, NoEpoch
from fhir_server.access.patients import PatientPicker
from fhir_server.auth.keys import KeyStore
from fhir_server.auth.server import AuthServer
from fhir_server.config import Settings
from fhir_server.engine.capabilities import EngineCapabilities, detect
from fhir_server.fhir.identifiers import unique_keys
from fhir_server.fhir.profiles import Profiles
from fhir_server.fhir.types import SUPPORTED_TYPES
from fhir_server.records.audit import AuditHook
from fhir_server.records.destruction import Destroyer
from fhir_server.records.hooks import Hook, Hooks
from fhir_server.records.invalidation import ConsentChanges
from fhir_server.records.notices import BreakGlassLog
from fhir_server.records.provenance import ProvenanceRecorder
from fhir_server.records.trail import AuditTrail
from fhir_server.search.extract import index_fields, index_specs
from fhir_server.storage.binaries import BinaryStore
from fhir_server.storage.repository import Repository
from fhir_server.storage.secrets import shared_secret


@dataclass(slots=True)
class Services:
    """What one server process holds for its whole life."""

    settings: Settings
    repository: Repository
    engine: EngineCapabilities
    access: AccessDecisionPoint
    hooks: Hooks
    cursor_key: bytes
    auth: AuthServer | None = None
    profiles: Profiles = Profiles(())  # the published StructureDefinitions (fhir/profiles.py)
    trail: AuditTrail | None = None  # the audit trail (records/trail.py)
    destroyer: Destroyer | None = None  # record destruction (records/destruction.py)
    provenance: ProvenanceRecorder = ProvenanceRecorder()  # the Provenance of each write (records/provenance.py)

    async def ping(self) -> None:
        await self.repository.client.admin.command("ping")


def connect(settings: Settings, uri: str | None = None, **options) -> AsyncMongoClient:
    """The driver client, with the options every part of the server relies on."""
    target = uri or (settings.mongodb_uri.get_secret_value() if settings.mongodb_uri else None)
    if target is None:
        raise RuntimeError("FHIR_MONGODB_URI is not set (the CLI sets it when it starts the embedded engine)")
    return AsyncMongoClient(target, tz_aware=True, uuidRepresentation="standard", **options)


def repository(client: AsyncMongoClient, db: AsyncDatabase, transactions: bool = False,
               crash_after: int | None = None, engine: EngineCapabilities | None = None) -> Repository:
    """The resource repository with the search index extraction of fhir_server/search."""
    return Repository(client, db, SUPPORTED_TYPES, BinaryStore(db), index_fields=index_fields,
                      index_specs=index_specs, transactions=transactions, crash_after=crash_after,
                      in_pushdown=engine is None or engine.in_pushdown, unique_keys=unique_keys,
                      atomic_updates=engine is None or engine.atomic_updates)


def consent_epoch(settings: Settings, db: AsyncDatabase):
    """The consent epoch of access/epoch.py for this configuration."""
    mode = settings.consent_cache
    if mode == "auto":
        mode = "host" if os.environ.get(ENV_FILE) else "database"
    if mode == "host":
        return HostEpoch(os.environ.get(ENV_FILE))
    if mode == "database":
        return DatabaseEpoch(db)
    return NoEpoch()


async def build(settings: Settings, client: AsyncMongoClient, *, policies: Sequence[Policy] = (),
                hooks: Sequence[Hook] = ()) -> Services:
    profiles = Profiles.load(settings.profiles_dir)  # first: a missing folder stops the start at once
    db = client[settings.database]
    engine = await detect(client, settings.database)
    repo = repository(client, db, engine.transactions, settings.test_crash_after_step, engine)
    await repo.ensure_indexes()
    await repo.recover()  # what transactions interrupted by a crash left: finished or undone
    epoch = consent_epoch(settings, db)
    await epoch.bump()  # whatever a crashed predecessor changed without telling: start afresh everywhere
    consent = ConsentPolicy(settings.consent_default_policy, epoch)
    trail = AuditTrail(repo, enabled=settings.audit)
    await trail.ensure_indexes()
    hooks = [ConsentChanges(epoch), *hooks, AuditHook(trail)]  # audit last: it hears every outcome
    auth = AuthServer(settings, db, PatientPicker(repo, consent), on_break_glass=BreakGlassLog(trail).declared,
                      audit=trail.store)  # sign-ins, tokens and revocations join the same audit trail
    await auth.start()
    destroyer = Destroyer(repo, trail, auth.keys, settings.destruction_grace_seconds,
                          settings.test_destruction_crash_after, epoch)
    await destroyer.ensure_indexes()
    await destroyer.resume()  # destructions a crash interrupted: finished before serving
    return Services(settings, repo, engine, AccessDecisionPoint([consent, AuditReaders(), *policies]), Hooks(hooks),
                    await shared_secret(db, "cursor-key"), auth, profiles, trail, destroyer,
                    ProvenanceRecorder(enabled=settings.provenance))


async def destroyer_for_cli(settings: Settings, db: AsyncDatabase) -> tuple[Destroyer, AuditTrail]:
    """The destruction service for the administrators' CLI (`fhir-server records`): the same
    repository, audit trail (a chain of its own) and signing keys as the server."""
    engine = await detect(db.client, settings.database)
    repo = repository(db.client, db, engine.transactions, engine=engine)
    await repo.ensure_indexes()
    trail = AuditTrail(repo)
    await trail.ensure_indexes()
    keys = KeyStore(db, settings.signing_key_rotation_days)
    await keys.ensure_current()
    destroyer = Destroyer(repo, trail, keys, settings.destruction_grace_seconds, None, DatabaseEpoch(db))
    await destroyer.ensure_indexes()
    return destroyer, trail
