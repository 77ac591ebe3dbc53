"""The access decision, as a database filter, for searches and every other way of reaching data.

A permit-with-filter decision carries rules (the launch patient's compartment, granular scope
queries). For searches, `_include`, `_revinclude`, chains and `_has`, those rules are compiled into
the MongoDB filter so that totals, paging and resolved references only ever see permitted
resources; `may_see` still checks each returned resource as a second line of defence.
"""

from __future__ import annotations

from fhir_server.access.compartment import COMPARTMENT_PARAMS, OUTSIDE
from fhir_server.access.decision import Effect
from fhir_server.auth.scopes import ALL
from fhir_server.search import mongo
from fhir_server.search.parse import parse
from fhir_server.search.registry import REFERENCE, field_name

DENIED = None
NO_DB_FILTER: dict = {}


class Inexact(dict):
    """An empty filter standing for rules the database cannot express (Binary.securityContext):
    every resource is fetched and `may_see` decides, so counts over it would be wrong."""


INEXACT = Inexact()


def patient_compartment_filter(rtype: str, patient_id: str) -> dict | None:
    """Resources of `rtype` in Patient/<id>'s compartment (R4 CompartmentDefinition/patient).

    None when the membership cannot be expressed on index fields (Binary.securityContext is not a
    search parameter): the per-resource check then does the filtering alone.
    """
    ref = f"Patient/{patient_id}"
    if rtype == "Patient":
        return {"$or": [{"_id": patient_id}, {field_name(REFERENCE, "link"): ref}]}
    if rtype in OUTSIDE:
        return {}
    params = COMPARTMENT_PARAMS.get(rtype)
    if not params:
        return None
    conds = [{field_name(REFERENCE, p): ref} for p in params]
    return conds[0] if len(conds) == 1 else {"$or": conds}


def access_filter(ctx, interaction: str, rtype: str) -> dict | None:
    """The filter restricting `rtype` to what ctx.principal may reach, {} for all, None if denied."""
    decision = ctx.services.access.decide(ctx.principal, interaction, rtype)
    if decision.effect is Effect.DENY:
        return DENIED
    rules = decision.filters.get("rules", ALL) if decision.effect is Effect.FILTER else ALL
    if rules == ALL:
        return NO_DB_FILTER
    alternatives = []
    for rule in rules:
        parts = []
        if rule.patient:
            cf = patient_compartment_filter(rtype, rule.patient)
            if cf is None:
                return INEXACT  # cannot narrow in the database: may_see filters each resource
            parts.append(cf)
        if rule.query:
            parts.append(mongo.compile(parse(rtype, list(rule.query))))
        alternatives.append(mongo.merge([p for p in parts if p]))
    if any(not alt for alt in alternatives):
        return NO_DB_FILTER
    return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}


def restrict(flt: dict, access: dict) -> dict:
    if not access:
        return flt
    if not flt:
        return access
    return {"$and": [flt, access]}
