"""The CapabilityStatement, generated from what this server really does.

https://hl7.org/fhir/R4/capabilitystatement.html. It depends only on the code and on whether the
engine has multi-document transactions, so the published copy in capability/ (production shape:
a MongoDB replica set) can be compared with what a running server serves.
"""

from __future__ import annotations

from fhir_server import __version__
from fhir_server.fhir.types import SUPPORTED_TYPES
from fhir_server.rest.context import RequestContext
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result

RELEASE_DATE = "2026-11-25"
TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type"]


def capability_statement(transactions: bool) -> dict:
    resources = []
    for rtype in SUPPORTED_TYPES:
        resources.append({
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": False,
            "conditionalRead": "full-support",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [
                {"name": "_count", "type": "number", "documentation": "Page size"},
            ],
            "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
        })
    system = [{"code": "batch"}, {"code": "history-system"}]
    if transactions:
        system.insert(0, {"code": "transaction"})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "fhir-server contributors",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "Patient-controlled shared medical record (FHIR R4)"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Transaction Bundles need an engine with multi-document transactions "
                             "(MongoDB replica set); on other engines the transaction interaction is not listed.",
            "resource": resources,
            "interaction": system,
        }],
    }


async def capabilities(ctx: RequestContext, ix: Interaction) -> Result:
    return Result(status=200, resource=capability_statement(ctx.services.engine.transactions))
