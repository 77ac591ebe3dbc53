"""FHIR identifiers, resource type names and the types this server stores.

Id and reference syntax: https://hl7.org/fhir/R4/datatypes.html#id and
https://hl7.org/fhir/R4/references.html#literal.
"""

from __future__ import annotations

import json
import re
from importlib import resources

# The resource types whose records the server keeps (see README, "What we store").
SUPPORTED_TYPES: tuple[str, ...] = (
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Consent",
    "DocumentReference",
    "AuditEvent",
    "Provenance",
    "Binary",
    "List",
)
SUPPORTED = frozenset(SUPPORTED_TYPES)

ALL_R4_TYPES: frozenset[str] = frozenset(
    json.loads(resources.files("fhir_server.data").joinpath("resource_types.json").read_text())[
        "resourceTypes"
    ]
)

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")
_RELATIVE_REF = re.compile(
    r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/(?P<vid>[A-Za-z0-9\-.]{1,64}))?"
)
_ABSOLUTE_REF = re.compile(r"https?://[^\s]+")
URN_UUID_RE = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_URN_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")


def is_valid_id(value: str) -> bool:
    return ID_RE.fullmatch(value) is not None


def parse_relative_reference(value: str) -> tuple[str, str, str | None] | None:
    """`Type/id[/_history/vid]` with a real R4 type, or None."""
    m = _RELATIVE_REF.fullmatch(value)
    if m is None or m["type"] not in ALL_R4_TYPES:
        return None
    return m["type"], m["id"], m["vid"]


def reference_problem(value: str, *, allow_urn: bool) -> str | None:
    """Why a Reference.reference string is unacceptable, or None when it is fine."""
    if value.startswith("#"):
        return None if value == "#" or is_valid_id(value[1:]) else f"'{value}' is not a valid contained reference"
    if parse_relative_reference(value) is not None:
        return None
    if value.startswith("urn:"):
        if URN_UUID_RE.fullmatch(value) or _URN_OID.fullmatch(value):
            return None if allow_urn else f"'{value}' can only be resolved inside a transaction Bundle"
        return f"'{value}' is not a valid urn:uuid or urn:oid"
    if _ABSOLUTE_REF.fullmatch(value):
        return None  # another server's resource or a canonical: opaque to us
    return f"'{value}' is not a literal reference (Type/id, absolute URL, #contained or urn)"
