"""Patient compartment membership and granular-scope matching, on resource JSON.

Which resource types belong to the Patient compartment, and through which search parameters,
follows the official R4 CompartmentDefinition/patient
(http://hl7.org/fhir/R4/compartmentdefinition-patient.html), restricted to the types this server
stores. Membership is computed by the same code that writes the search index
(`search.extract.reference_keys`), so "in P's compartment" here means exactly what the database
filter `r_<param> = Patient/P` (access/filters.py) selects: one rule, for local (relative)
references only. A reference to `https://elsewhere/fhir/Patient/P` names another server's
patient and puts nothing in our P's compartment.

Binary is not in the R4 compartment; SMART and FHIR use `Binary.securityContext` to say whose
data it is, so this server defines the search parameter `Binary?securitycontext=` (see
fhir_server/data/local_search_parameters.json) and a Binary is in P's compartment when its
securityContext references Patient/P. Types outside the compartment (Practitioner,
PractitionerRole, Organization) hold no patient's data: patient-context scopes may read them but
never write them (`OUTSIDE`).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from fhir_server.search.extract import param_fields, reference_keys, values_of
from fhir_server.search.mongo import token_entry
from fhir_server.search.parse import token_value
from fhir_server.search.registry import TOKEN, params_for

# R4 CompartmentDefinition/patient, for the types we store: type -> compartment search params.
COMPARTMENT_PARAMS: dict[str, tuple[str, ...]] = {
    "AuditEvent": ("patient",),
    "Consent": ("patient",),
    "DocumentReference": ("subject", "author"),
    "List": ("subject", "source"),
    "Patient": ("link",),
    "Provenance": ("patient",),
}
# Not in the R4 definition but patient data: membership through these (server-defined) parameters.
EXTRA_PARAMS: dict[str, tuple[str, ...]] = {"Binary": ("securitycontext",)}
# The parameters that say whom a resource is *about*: a patient-context write must be about the
# patient in context (DocumentReference.subject, not merely an author who happens to be them).
ABOUT_PARAMS: dict[str, tuple[str, ...]] = {
    "AuditEvent": ("patient",),
    "Consent": ("patient",),
    "DocumentReference": ("subject",),
    "List": ("subject",),
    "Provenance": ("patient",),
    "Binary": ("securitycontext",),
}
OUTSIDE = frozenset({"Practitioner", "PractitionerRole", "Organization"})


def membership_params(rtype: str) -> tuple[str, ...]:
    """The search parameters through which a resource of `rtype` is in a patient's compartment."""
    return COMPARTMENT_PARAMS.get(rtype, ()) + EXTRA_PARAMS.get(rtype, ())


def in_compartment_types() -> frozenset[str]:
    return frozenset(COMPARTMENT_PARAMS) | frozenset(EXTRA_PARAMS)


def _patients(rtype: str, resource: dict, codes: tuple[str, ...]) -> set[str]:
    out = set()
    params = params_for(rtype)
    for code in codes:
        for key in reference_keys(resource, params[code]):
            if key.startswith("Patient/") and key.count("/") == 1:
                out.add(key[len("Patient/"):])
    return out


def patients_of(rtype: str, resource: dict) -> set[str]:
    """Every patient whose compartment holds `resource`."""
    out = _patients(rtype, resource, membership_params(rtype))
    if rtype == "Patient" and isinstance(resource.get("id"), str):
        out.add(resource["id"])
    return out


def about_patients(rtype: str, resource: dict) -> set[str]:
    """The patients whose record `resource` belongs to: whom it is *about* (a DocumentReference's
    subject, a Consent's patient, a Binary's securityContext, a Patient itself); what patient
    consent decides on."""
    if rtype == "Patient":
        rid = resource.get("id")
        return {rid} if isinstance(rid, str) else set()
    return _patients(rtype, resource, ABOUT_PARAMS.get(rtype, ()))


def in_patient_compartment(rtype: str, resource: dict, patient: str) -> bool:
    return patient in patients_of(rtype, resource)


def is_about_only(rtype: str, resource: dict, patient: str) -> bool:
    """Whether `resource` is about `patient` and concerns no other patient: what a write made in
    that patient's context may store."""
    if rtype in OUTSIDE:
        return False
    about: AbstractSet[str | None]
    if rtype == "Patient":
        about = {resource.get("id")}
    else:
        about = _patients(rtype, resource, ABOUT_PARAMS.get(rtype, ()))
    return patient in about and patients_of(rtype, resource) <= {patient}


# --- granular scopes (?param=value) --------------------------------------------------------------

def matches_query(rtype: str, resource: dict, query: tuple[tuple[str, str], ...]) -> bool:
    """Does the resource satisfy every `param=value` of a granular scope? Token, reference, uri and
    string parameters are understood, with the search index's own matching; anything else never
    matches, so an unsupported constraint narrows access instead of widening it."""
    for name, raw in query:
        if not _one_param(rtype, resource, name, raw):
            return False
    return True


def _one_param(rtype: str, resource: dict, name: str, raw: str) -> bool:
    param = params_for(rtype).get(name)
    if param is None:
        return False
    alternatives = raw.split(",")  # comma = OR, as in search
    if param.type == "token":
        if name == "_id":
            return resource.get("id") in alternatives
        stored = param_fields(resource, param).get(param.f(TOKEN), [])
        stored = set(stored if isinstance(stored, list) else [stored])
        for alt in alternatives:
            entry = token_entry(param, token_value(alt))
            if entry == "" and stored or entry and entry in stored:
                return True
        return False
    if param.type == "reference":
        keys = reference_keys(resource, param)
        return any(k == alt or k.endswith("/" + alt) for alt in alternatives for k in keys)
    if param.type in ("uri", "string"):
        return any(isinstance(v, str) and v == alt for alt in alternatives for v, _ in values_of(resource, param))
    return False
