"""Access rules as database filters, so that queries, counts and paging only ever see what the
caller may reach (PCF "permit-with-filter" enforced in the query, not after it).

A scope rule is the launch patient's compartment (R4 CompartmentDefinition/patient, on the same
index fields a `DocumentReference?subject=Patient/x` search uses) and/or a granular scope's query,
compiled by the search compiler itself. Per-resource checks (access/compartment.py) use the same
index extraction, so the filter and the check agree on every resource.
"""

from __future__ import annotations

from fhir_server.access.compartment import OUTSIDE, membership_params
from fhir_server.auth.scopes import ALL
from fhir_server.search import mongo
from fhir_server.search.parse import parse
from fhir_server.search.registry import REFERENCE, field_name

NOTHING = mongo.NOTHING


def patient_compartment_filter(rtype: str, patient_id: str) -> dict | None:
    """Resources of `rtype` in Patient/<id>'s compartment; {} for types outside the compartment
    (Practitioner, Organization…: nobody's data), None for a type that can never be in it."""
    ref = f"Patient/{patient_id}"
    if rtype in OUTSIDE:
        return {}
    conds = [{field_name(REFERENCE, p): ref} for p in membership_params(rtype)]
    if rtype == "Patient":
        conds.insert(0, {"_id": patient_id})
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"$or": conds}


def rules_filter(rtype: str, rules) -> dict:
    """The filter for "satisfies at least one rule" ({} when every resource of the type does)."""
    if rules == ALL:
        return {}
    alternatives = []
    for rule in rules:
        parts = []
        if rule.patient:
            cf = patient_compartment_filter(rtype, rule.patient)
            if cf is None:
                continue  # this rule never admits a resource of this type
            parts.append(cf)
        if rule.query:
            parts.append(mongo.compile(parse(rtype, list(rule.query))))
        alt = mongo.merge([p for p in parts if p])
        if not alt:
            return {}
        alternatives.append(alt)
    if not alternatives:
        return NOTHING
    return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}


def restrict(flt: dict, access: dict) -> dict:
    """`flt` AND `access` (either may be {} for "everything")."""
    if not access:
        return flt
    if not flt:
        return access
    return {"$and": [flt, access]}
