"""How a resource version is laid out in MongoDB.

Current versions live in one collection per type, `_id` = the FHIR id; every version (including
delete tombstones) lives in `<Type>_history`, `_id` = "id/version". The resource JSON is stored as
bytes exactly as it will be served, so reads never re-serialise it (DEVELOPERS.md: read paths
return stored JSON as is). Search only ever looks at the index fields merged into current
documents, which `fhir_server.search` computes at write time. Field names starting with `_` are
ours; index field names never start with `_`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

F_ID = "_id"
F_VERSION = "_v"
F_UPDATED = "_lu"
F_JSON = "_json"
F_BINARY = "_bin"  # GridFS file id of a large Binary's content
F_BINARY_SIZE = "_binlen"
F_BINARY_SHARED = "_bs"  # the GridFS content is an earlier version's: never deleted with this version
H_RESOURCE_ID = "_rid"
H_OP = "_op"  # create | update | delete

OP_CREATE, OP_UPDATE, OP_DELETE = "create", "update", "delete"


def history_collection(rtype: str) -> str:
    return f"{rtype}_history"


def history_id(rid: str, version: int) -> str:
    return f"{rid}/{version}"


@dataclass(slots=True)
class Version:
    """One stored version of a resource, as the storage layer hands it out."""

    type: str
    id: str
    version: int
    last_updated: datetime
    op: str
    json: bytes | None  # None for a delete tombstone
    binary_file: object | None = None  # GridFS id when Binary content lives outside the document
    binary_size: int | None = None

    @property
    def deleted(self) -> bool:
        return self.op == OP_DELETE

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @classmethod
    def from_current(cls, rtype: str, doc: dict) -> Version:
        return cls(
            rtype, doc[F_ID], doc[F_VERSION], aware(doc[F_UPDATED]), OP_UPDATE, doc[F_JSON],
            doc.get(F_BINARY), doc.get(F_BINARY_SIZE),
        )

    @classmethod
    def from_history(cls, rtype: str, doc: dict) -> Version:
        return cls(
            rtype, doc[H_RESOURCE_ID], doc[F_VERSION], aware(doc[F_UPDATED]), doc[H_OP], doc.get(F_JSON),
            doc.get(F_BINARY), doc.get(F_BINARY_SIZE),
        )


def aware(value: datetime) -> datetime:
    """UTC-aware, with the stdlib's timezone.utc (email.utils and strftime expect it)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def fhir_instant(value: datetime) -> str:
    """FHIR `instant` (https://hl7.org/fhir/R4/datatypes.html#instant) at millisecond precision, UTC."""
    value = aware(value).astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def now_ms() -> datetime:
    """Now, truncated to what BSON dates keep, so what we return equals what we stored."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
