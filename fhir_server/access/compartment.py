"""Patient compartment membership and granular-scope matching on stored resource JSON.

Which resource types belong to the Patient compartment, and through which search parameters,
follows the official R4 CompartmentDefinition/patient
(http://hl7.org/fhir/R4/compartmentdefinition-patient.html), restricted to the types this server
stores; tests/unit/test_scopes_compartment.py checks the table against the official JSON when a
copy is available. The element paths come from the search parameter definitions we already ship
(fhir_server/data/search_parameters.json), so "in the compartment" means exactly what
`DocumentReference?patient=…`-style searches mean.

Binary is not in the R4 compartment; SMART and FHIR use `Binary.securityContext` to say whose
data it is, so a Binary is in P's compartment when its securityContext references Patient/P.
Types outside the compartment (Practitioner, PractitionerRole, Organization) hold no patient's
data: patient-context scopes may read them (`OUTSIDE`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

# R4 CompartmentDefinition/patient, for the types we store: type -> compartment search params.
COMPARTMENT_PARAMS: dict[str, tuple[str, ...]] = {
    "AuditEvent": ("patient",),
    "Consent": ("patient",),
    "DocumentReference": ("subject", "author"),
    "List": ("subject", "source"),
    "Patient": ("link",),
    "Provenance": ("patient",),
}
# Not in the R4 definition but patient data: membership through these paths.
EXTRA_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Binary": (("securityContext",),),
}
OUTSIDE = frozenset({"Practitioner", "PractitionerRole", "Organization"})


@lru_cache(maxsize=1)
def _search_params() -> dict:
    return json.loads(resources.files("fhir_server.data").joinpath("search_parameters.json").read_text())["types"]


def param_paths(rtype: str, code: str) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """The element paths of a search parameter: each path is a tuple of steps, each step a tuple of
    alternative element names (choice types)."""
    return _param_paths(rtype, code)


@lru_cache(maxsize=512)
def _param_paths(rtype: str, code: str):
    spec = _search_params().get(rtype, {}).get(code)
    if spec is None:
        return ()
    return tuple(tuple(tuple(alt[0] for alt in step) for step in p["steps"]) for p in spec.get("paths", ()))


@lru_cache(maxsize=64)
def compartment_paths(rtype: str) -> tuple[tuple[tuple[str, ...], ...], ...]:
    paths = []
    for code in COMPARTMENT_PARAMS.get(rtype, ()):
        paths.extend(_param_paths(rtype, code))
    for path in EXTRA_PATHS.get(rtype, ()):
        paths.append(tuple((name,) for name in path))
    return tuple(paths)


def in_compartment_types() -> frozenset[str]:
    return frozenset(COMPARTMENT_PARAMS) | frozenset(EXTRA_PATHS)


def walk(node, path) -> list:
    """Values reached from `node` along `path` (steps of alternatives), lists flattened."""
    current = [node]
    for step in path:
        nxt = []
        for item in current:
            if not isinstance(item, dict):
                continue
            for name in step:
                value = item.get(name)
                if value is None:
                    continue
                if isinstance(value, list):
                    nxt.extend(value)
                else:
                    nxt.append(value)
        current = nxt
        if not current:
            break
    return current


def references_patient(ref: object, patient: str) -> bool:
    """Does a Reference (dict) or reference string point at Patient/<patient>?"""
    if isinstance(ref, dict):
        ref = ref.get("reference")
    if not isinstance(ref, str):
        return False
    target = "Patient/" + patient
    if ref == target:
        return True
    # absolute (https://base/fhir/Patient/x) or versioned (Patient/x/_history/2)
    i = ref.find(target)
    if i < 0:
        return False
    if i > 0 and ref[i - 1] != "/":
        return False
    rest = ref[i + len(target):]
    return rest == "" or rest.startswith("/_history/")


def in_patient_compartment(rtype: str, resource: dict, patient: str) -> bool:
    if rtype == "Patient" and resource.get("id") == patient:
        return True
    for path in compartment_paths(rtype):
        for ref in walk(resource, path):
            if references_patient(ref, patient):
                return True
    return False


def patients_of(rtype: str, resource: dict) -> set[str]:
    """Every patient whose compartment holds `resource` (relative Patient/x references only)."""
    out = set()
    if rtype == "Patient" and isinstance(resource.get("id"), str):
        out.add(resource["id"])
    for path in compartment_paths(rtype):
        for ref in walk(resource, path):
            if isinstance(ref, dict):
                ref = ref.get("reference")
            if isinstance(ref, str) and "Patient/" in ref:
                rid = ref.split("Patient/", 1)[1].split("/", 1)[0]
                if rid:
                    out.add(rid)
    return out


# --- granular scopes (?param=value) --------------------------------------------------------------

def _token_match(value, system: str | None, code: str | None) -> bool:
    """FHIR token semantics: `code`, `system|code`, `|code` (no system), `system|` (any code)."""
    if isinstance(value, dict):
        if "coding" in value:
            return any(_token_match(c, system, code) for c in value.get("coding") or ())
        vsys = value.get("system")
        vcode = value.get("code", value.get("value"))
    elif isinstance(value, (str, bool, int)):
        vsys, vcode = None, str(value).lower() if isinstance(value, bool) else str(value)
    else:
        return False
    if system is not None:
        if system == "":
            if vsys is not None:
                return False
        elif vsys != system:
            return False
    return code is None or code == "" and system is not None or vcode == code


def matches_query(rtype: str, resource: dict, query: tuple[tuple[str, str], ...]) -> bool:
    """Does the resource satisfy every `param=value` of a granular scope? Token and reference
    parameters (and `_security` / `_tag`) are understood; anything else never matches, so an
    unsupported constraint narrows access instead of widening it."""
    for name, raw in query:
        if not _one_param(rtype, resource, name, raw):
            return False
    return True


_META_PATHS = {"_security": (("meta",), ("security",)), "_tag": (("meta",), ("tag",))}


def _one_param(rtype: str, resource: dict, name: str, raw: str) -> bool:
    alternatives = raw.split(",")  # comma = OR, as in search
    if name in _META_PATHS:
        values, ptype = walk(resource, _META_PATHS[name]), "token"
    else:
        spec = _search_params().get(rtype, {}).get(name)
        if spec is None:
            return False
        ptype = spec["type"]
        values = []
        for path in _param_paths(rtype, name):
            values.extend(walk(resource, path))
    if ptype == "token":
        for alt in alternatives:
            system, bar, code = alt.partition("|")
            if not bar:
                system, code = None, alt
            if any(_token_match(v, system, code) for v in values):
                return True
        return False
    if ptype == "reference":
        for alt in alternatives:
            for v in values:
                ref = v.get("reference") if isinstance(v, dict) else None
                if isinstance(ref, str) and (ref == alt or ref.endswith("/" + alt)):
                    return True
        return False
    if ptype in ("uri", "string"):
        return any(isinstance(v, str) and v == alt for alt in alternatives for v in values)
    return False
