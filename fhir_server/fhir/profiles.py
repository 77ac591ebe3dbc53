"""The record's published profiles (profiles/, StructureDefinitions with snapshots), served as
static, read-only conformance resources and listed in the CapabilityStatement (`supportedProfile`).

They are files, not stored resources: they describe this server version's rules (the server
enforces the same rules natively, fhir/identifiers.py and fhir/dmp.py; tests/test_profiles.py
checks that the HAPI validator with these profiles and the server agree), so they change with the
code and never through the API. Loaded once per process from `FHIR_PROFILES_DIR` (default: the
`profiles/` folder next to the package, i.e. the checkout; the Docker image copies it and sets the
variable).

Search supports what a client needs to resolve a canonical URL or list them: `url` (with an
optional `|version`), `_id`, `name`, `type`, `status`, `version`; no criteria lists them all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fhir_server.fhir.outcome import FhirError

CONFORMANCE_TYPES = ("StructureDefinition",)
SEARCH_PARAMS = ("url", "_id", "name", "type", "status", "version")
# the query parameters that are not search criteria (formats, paging of a list that fits one page)
CONTROL_PARAMS = ("_format", "_pretty", "_count", "_summary", "_elements", "_total")


def default_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "profiles"


@dataclass(frozen=True, slots=True)
class Profiles:
    """The StructureDefinitions of one profiles folder, in file-name order."""

    definitions: tuple[dict, ...]

    @classmethod
    def load(cls, directory: Path | None = None) -> Profiles:
        folder = directory or default_dir()
        if not folder.is_dir():
            raise RuntimeError(f"profiles folder {folder} not found (set FHIR_PROFILES_DIR)")
        out = []
        for path in sorted(folder.glob("*.json")):
            sd = json.loads(path.read_text(encoding="utf-8"))
            if sd.get("resourceType") != "StructureDefinition" or not sd.get("id") or not sd.get("url"):
                raise RuntimeError(f"{path}: not a StructureDefinition with an id and a url")
            if not (sd.get("snapshot") or {}).get("element"):
                raise RuntimeError(f"{path}: no snapshot (make profiles)")
            out.append(sd)
        return cls(tuple(out))

    def read(self, rtype: str, rid: str) -> dict | None:
        if rtype not in CONFORMANCE_TYPES:
            return None
        return next((sd for sd in self.definitions if sd["id"] == rid), None)

    def search(self, rtype: str, params: Iterable[tuple[str, str]]) -> list[dict]:
        """The definitions matching every criterion (each a comma-separated OR list); 400 for a
        parameter this list does not support, rather than silently ignoring a criterion."""
        found = list(self.definitions) if rtype in CONFORMANCE_TYPES else []
        for name, value in params:
            if name in CONTROL_PARAMS:
                continue
            if name not in SEARCH_PARAMS:
                raise FhirError(400, "not-supported", f"StructureDefinition search supports {', '.join(SEARCH_PARAMS)};"
                                                      f" not '{name}'")
            wanted = value.split(",")
            found = [sd for sd in found if any(_matches(sd, name, w) for w in wanted)]
        return found

    def supported(self, rtype: str) -> list[str]:
        """Canonical URLs of the profiles of `rtype` (CapabilityStatement `supportedProfile`)."""
        return [sd["url"] for sd in self.definitions if sd.get("type") == rtype]


def _matches(sd: dict, name: str, value: str) -> bool:
    if name == "url":
        url, _, version = value.partition("|")
        return sd["url"] == url and (not version or sd.get("version") == version)
    if name == "name":  # string search: case-insensitive prefix
        return str(sd.get("name", "")).lower().startswith(value.lower())
    field = {"_id": "id"}.get(name, name)
    return sd.get(field) == value
