"""`_summary` and `_elements`: https://hl7.org/fhir/R4/search.html#summary and #elements.

Subsetted resources are marked with the SUBSETTED tag so nobody mistakes them for the whole record.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import orjson

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS = ("resourceType", "id", "meta")


@cache
def _elements() -> dict:
    return json.loads(resources.files("fhir_server.data").joinpath("summary_elements.json").read_text())


def _keeps(key: str, names: set[str]) -> bool:
    if key in names:
        return True
    # choice elements: `deceased` keeps deceasedBoolean / deceasedDateTime; `_x` primitive extensions follow x
    base = key[1:] if key.startswith("_") else key
    if base in names:
        return True
    return any(base.startswith(n) and len(base) > len(n) and base[len(n)].isupper() for n in names)


def _tagged(resource: dict) -> dict:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = tags + [SUBSETTED]
    resource["meta"] = meta
    return resource


def subset(raw: bytes, rtype: str, summary: str | None, elements: list[str] | None) -> bytes:
    """The stored JSON, reduced as the client asked; unchanged bytes when nothing applies."""
    if summary in (None, "false") and not elements:
        return raw
    resource = orjson.loads(raw)
    info = _elements().get(rtype, {"summary": [], "mandatory": []})
    mandatory = set(info["mandatory"]) | set(_ALWAYS)
    if summary == "true":
        keep = set(info["summary"]) | mandatory
    elif summary == "text":
        keep = {"text"} | mandatory
    elif summary == "data":
        keep = {k for k in resource if k != "text"}
    else:
        keep = set(elements or ()) | mandatory
    out = {k: v for k, v in resource.items() if k in _ALWAYS or _keeps(k, keep)}
    return orjson.dumps(_tagged(out))
