"""FHIR interactions as data: their kinds and one parsed request, however it arrived.

Below both the REST layer (which parses HTTP and Bundle entries into an `Interaction`,
rest/interaction.py) and the access layer (which decides on interaction kinds), so neither has to
import the other. Kinds follow the R4 RESTful API (https://hl7.org/fhir/R4/http.html).
"""

from __future__ import annotations

from dataclasses import dataclass, field

CAPABILITIES = "capabilities"
READ, VREAD, UPDATE, PATCH, DELETE, CREATE = "read", "vread", "update", "patch", "delete", "create"
SEARCH_TYPE, SEARCH_SYSTEM = "search-type", "search-system"
HISTORY_INSTANCE, HISTORY_TYPE, HISTORY_SYSTEM = "history-instance", "history-type", "history-system"
BUNDLE = "batch/transaction"
OPERATION = "operation"
# read and search of this server's own definitions (profiles/): static, read-only, not patient data
CONFORMANCE_READ, CONFORMANCE_SEARCH = "conformance-read", "conformance-search"
# a bulk export's status URL (GET: progress or manifest, DELETE: cancel) and its output files
# (https://hl7.org/fhir/uv/bulkdata/export.html): no scope of their own; only the principal who
# started the job reaches them (records/export.py)
EXPORT_STATUS, EXPORT_FILE = "export-status", "export-file"
JOB_BOUND = frozenset({EXPORT_STATUS, EXPORT_FILE})
# what any authenticated caller may ask, whatever its scopes (the metadata needs no token at all)
PUBLIC = frozenset({CAPABILITIES, CONFORMANCE_READ, CONFORMANCE_SEARCH})

WRITES = frozenset({UPDATE, PATCH, DELETE, CREATE})


@dataclass(slots=True)
class Interaction:
    kind: str
    method: str
    type: str | None = None
    id: str | None = None
    vid: str | None = None
    operation: str | None = None  # e.g. "validate" for $validate
    job: str | None = None  # a bulk export job id (EXPORT_STATUS, EXPORT_FILE)
    part: int | None = None  # an output file of that job (EXPORT_FILE)
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes | None = None
    resource: dict | None = None  # already-parsed body (Bundle entries)
    compartment: str | None = None  # Patient id of a compartment search (Patient/123/DocumentReference)
    existing: object | None = None  # a transaction's conditional create that matched this Version
    size: int = 0  # bytes of a Bundle entry's resource as sent (decides whether validating it is offloaded)
    bundle_type: str | None = None  # batch or transaction, once a Bundle's body is read

    @property
    def rtype(self) -> str:
        """`type`, for an interaction whose kind always names a resource type (all but the
        system-level ones: capabilities, batch/transaction, system search and history)."""
        assert self.type is not None, f"a {self.kind} interaction has a resource type"
        return self.type

    @property
    def rid(self) -> str:
        """`id`, for an interaction on one resource instance (read, vread, instance history...)."""
        assert self.id is not None, f"a {self.kind} interaction has a resource id"
        return self.id

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def path_for_links(self) -> str:
        """The search path, relative to the base, as paging links must repeat it."""
        return f"Patient/{self.compartment}/{self.type}" if self.compartment else (self.type or "")
