"""A parsed FHIR interaction: what the client asked for, independent of how it arrived.

The HTTP endpoint and every Bundle entry are parsed into an `Interaction`, so both follow the
same path through the access decision and the handlers (RESTful API:
https://hl7.org/fhir/R4/http.html, Bundle entries: https://hl7.org/fhir/R4/http.html#transaction).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from fhir_server.fhir.interactions import (  # noqa: F401  (re-exported: the kinds are part of this API)
    BUNDLE,
    CAPABILITIES,
    CONFORMANCE_READ,
    CONFORMANCE_SEARCH,
    CREATE,
    DELETE,
    EXPORT_FILE,
    EXPORT_STATUS,
    HISTORY_INSTANCE,
    HISTORY_SYSTEM,
    HISTORY_TYPE,
    OPERATION,
    PATCH,
    READ,
    SEARCH_SYSTEM,
    SEARCH_TYPE,
    UPDATE,
    VREAD,
    WRITES,
    Interaction,
)
from fhir_server.fhir.outcome import FhirError
from fhir_server.fhir.profiles import CONFORMANCE_TYPES
from fhir_server.fhir.types import ALL_R4_TYPES, SUPPORTED, is_valid_id


def _allowed(methods: dict[str, str], method: str, path: str) -> str:
    kind = methods.get(method)
    if kind is None:
        raise FhirError(
            405, "not-supported", f"{method} is not supported on {path}",
            headers={"Allow": ", ".join(sorted(methods))},
        )
    return kind


def _check_type(rtype: str) -> None:
    if rtype not in SUPPORTED:
        why = "is not stored by this server" if rtype in ALL_R4_TYPES else "is not a FHIR R4 resource type"
        raise FhirError(404, "not-supported", f"resource type '{rtype}' {why}")


def _check_id(value: str, what: str = "id") -> None:
    if not is_valid_id(value):
        raise FhirError(400, "value", f"'{value[:80]}' is not a valid FHIR {what}")


def _conformance(ix: Interaction, segs: list[str], method: str) -> None:
    """The server's published definitions (fhir/profiles.py): read and search only; writes are 405."""
    ix.type = segs[0]
    if len(segs) == 1:
        ix.kind = _allowed({"GET": CONFORMANCE_SEARCH}, method, ix.type)
    elif len(segs) == 2 and segs[1] == "_search":
        ix.kind = _allowed({"POST": CONFORMANCE_SEARCH}, method, f"{ix.type}/_search")
    elif len(segs) == 2 and not segs[1].startswith(("$", "_")):
        ix.id = segs[1]
        _check_id(ix.id)
        ix.kind = _allowed({"GET": CONFORMANCE_READ}, method, f"{ix.type}/{ix.id}")
    else:
        raise FhirError(404, "not-supported", f"{ix.type} resources are this server's static definitions: read and "
                                              "search only")


BULK_PATH = "_bulk"  # /fhir/_bulk/{job} (status), /fhir/_bulk/{job}/{n}.ndjson (output files)


def _bulk(ix: Interaction, segs: list[str], method: str) -> None:
    job = segs[1]
    if not (len(job) == 32 and all(c in "0123456789abcdef" for c in job)):
        raise FhirError(404, "not-found", "no bulk export job has this id")
    ix.job = job
    if len(segs) == 2:
        ix.kind = _allowed({"GET": EXPORT_STATUS, "DELETE": EXPORT_STATUS}, method, "a bulk export status URL")
        return
    name = segs[2].removesuffix(".ndjson")
    if not name.isdigit() or len(name) > 9:
        raise FhirError(404, "not-found", "no such file in this bulk export")
    ix.part = int(name)
    ix.kind = _allowed({"GET": EXPORT_FILE}, method, "a bulk export file")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse(method: str, path: str, query: str | list[tuple[str, str]], headers: dict[str, str],
          body: bytes | None = None, resource: dict | None = None) -> Interaction:
    """Parse `path` (relative to the FHIR base, without leading slash) and method into an Interaction."""
    params = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else list(query)
    if any(_CONTROL.search(name) or _CONTROL.search(value) for name, value in params) or _CONTROL.search(path or ""):
        # R4 strings hold no control characters but tab, CR and LF; the engine could not compare them
        raise FhirError(400, "invalid", "the request's path or parameters contain control characters")
    segs = [s for s in path.split("/") if s] if path else []
    ix = Interaction(kind="", method=method, params=params, headers=headers, body=body, resource=resource)
    n = len(segs)
    if n == 0:
        ix.kind = _allowed({"GET": SEARCH_SYSTEM, "POST": BUNDLE}, method, "the base URL")
    elif segs[0] == "metadata" and n == 1:
        ix.kind = _allowed({"GET": CAPABILITIES}, method, "metadata")
    elif segs[0] == "_history" and n == 1:
        ix.kind = _allowed({"GET": HISTORY_SYSTEM}, method, "_history")
    elif segs[0] == "$export" and n == 1:
        # system-level bulk export (https://hl7.org/fhir/uv/bulkdata/export.html#endpoint---system-level-export)
        ix.kind, ix.operation = OPERATION, "export"
        _allowed({"GET": OPERATION}, method, "$export")
    elif segs[0] == BULK_PATH and n in (2, 3):
        _bulk(ix, segs, method)
    elif segs[0].startswith("$"):
        raise FhirError(404, "not-supported", f"operation '{segs[0]}' is not supported at system level")
    elif segs[0] in CONFORMANCE_TYPES:
        _conformance(ix, segs, method)
    else:
        ix.type = segs[0]
        _check_type(ix.type)
        if n == 1:
            # PUT/PATCH/DELETE on a type are the conditional forms, selected by search criteria
            ix.kind = _allowed({"GET": SEARCH_TYPE, "POST": CREATE, "PUT": UPDATE, "PATCH": PATCH, "DELETE": DELETE},
                               method, ix.type)
        elif n == 2 and segs[1] == "_search":
            ix.kind = _allowed({"POST": SEARCH_TYPE}, method, f"{ix.type}/_search")
        elif n == 2 and segs[1] == "_history":
            ix.kind = _allowed({"GET": HISTORY_TYPE}, method, f"{ix.type}/_history")
        elif n == 2 and segs[1].startswith("$"):
            ix.kind, ix.operation = OPERATION, segs[1][1:]
            _allowed({"GET": OPERATION, "POST": OPERATION}, method, f"{ix.type}/{segs[1]}")
        else:
            ix.id = segs[1]
            _check_id(ix.id)
            if n == 2:
                ix.kind = _allowed({"GET": READ, "PUT": UPDATE, "PATCH": PATCH, "DELETE": DELETE}, method,
                                   f"{ix.type}/{ix.id}")
            elif n == 3 and segs[2] == "_history":
                ix.kind = _allowed({"GET": HISTORY_INSTANCE}, method, f"{ix.type}/{ix.id}/_history")
            elif n == 4 and segs[2] == "_history":
                ix.vid = segs[3]
                _check_id(ix.vid, "version id")
                ix.kind = _allowed({"GET": VREAD}, method, f"{ix.type}/{ix.id}/_history/{ix.vid}")
            elif n == 3 and ix.type == "Patient" and segs[2] in SUPPORTED:
                # compartment search: https://hl7.org/fhir/R4/compartmentdefinition.html#search
                ix.kind = _allowed({"GET": SEARCH_TYPE}, method, f"Patient/{ix.id}/{segs[2]}")
                ix.compartment, ix.id, ix.type = ix.id, None, segs[2]
            elif n == 3 and segs[2].startswith("$"):
                ix.kind, ix.operation = OPERATION, segs[2][1:]
                _allowed({"GET": OPERATION, "POST": OPERATION}, method, f"{ix.type}/{ix.id}/{segs[2]}")
            else:
                raise FhirError(404, "not-found", "no FHIR interaction matches this URL")
    return ix
