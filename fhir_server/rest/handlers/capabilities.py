"""The CapabilityStatement, generated from what this server really does.

https://hl7.org/fhir/R4/capabilitystatement.html. It depends only on the code (transactions are
atomic on every engine), so the published copy in capability/ equals what any running server serves.
"""

from __future__ import annotations

from collections.abc import Callable

from fhir_server import __version__
from fhir_server.fhir.profiles import CONFORMANCE_TYPES, SEARCH_PARAMS
from fhir_server.fhir.types import SUPPORTED_TYPES
from fhir_server.rest.context import RequestContext
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result
from fhir_server.search.registry import params_for

RELEASE_DATE = "2026-11-25"
TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type"]


def search_params(rtype: str) -> list[dict]:
    """Every parameter the search engine supports for `rtype`, from the R4 definitions it runs on."""
    out = []
    for code, p in sorted(params_for(rtype).items()):
        entry = {"name": code, "type": p.type}
        if p.url:
            entry["definition"] = p.url
        if p.description:
            entry["documentation"] = p.description
        out.append(entry)
    return out


def search_includes(rtype: str) -> list[str]:
    return ["*"] + [f"{rtype}:{code}" for code, p in sorted(params_for(rtype).items()) if p.type == "reference"]


def search_revincludes(rtype: str) -> list[str]:
    out = []
    for source in SUPPORTED_TYPES:
        for code, p in sorted(params_for(source).items()):
            if p.type == "reference" and (not p.targets or rtype in p.targets):
                out.append(f"{source}:{code}")
    return out


PUBLISHED_BASE_URL = "http://127.0.0.1:8080/fhir"  # the base in the published copy (make run's default)


def security(base_url: str) -> dict:
    """SMART App Launch: the OAuth endpoints (https://hl7.org/fhir/smart-app-launch/conformance.html)."""
    root = base_url[: -len("/fhir")] if base_url.endswith("/fhir") else base_url
    auth = root + "/auth"
    return {
        "cors": False,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}],
                     "text": "OAuth2 using SMART App Launch 2.2"}],
        "description": "Every request except this CapabilityStatement needs a SMART access token; discovery at "
                       ".well-known/smart-configuration. Patient consent (IHE PCF) decides which professionals "
                       "reach which records: a record is open under a Consent with policy "
                       "urn:fhir-dmp:policy:record; authorizations and blocks are Consents (scope "
                       "patient-privacy) with policy urn:fhir-dmp:policy:authorization; documents labelled "
                       "urn:fhir-dmp:security|masked are hidden from professionals but their author and the "
                       "patient's general practitioner. Emergency access: authorization request parameter "
                       "purpose_of_use=BTG with btg_reason. Patient/{id}/$explain-access tells the patient why.",
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "authorize", "valueUri": auth + "/authorize"},
                          {"url": "token", "valueUri": auth + "/token"},
                          {"url": "introspect", "valueUri": auth + "/introspect"},
                          {"url": "revoke", "valueUri": auth + "/revoke"}],
        }],
    }


PROFILE_SEARCH = {"url": ("uri", "The canonical URL (url|version to pin a version)"),
                  "_id": ("token", "The logical id"), "name": ("string", "The computable name (prefix)"),
                  "type": ("token", "The resource type constrained"), "status": ("token", "The status"),
                  "version": ("token", "The business version")}


def conformance_resources() -> list[dict]:
    """The published profiles (profiles/): read and search, nothing else."""
    return [{
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "documentation": "This server's published profiles (static, read-only; any authenticated caller). The "
                         "server enforces their rules natively on every write.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [{"name": name, "type": PROFILE_SEARCH[name][0], "documentation": PROFILE_SEARCH[name][1]}
                        for name in SEARCH_PARAMS],
    } for rtype in CONFORMANCE_TYPES]


def capability_statement(transactions: bool = True, base_url: str = PUBLISHED_BASE_URL,
                         supported_profiles: Callable[[str], list[str]] = lambda rtype: []) -> dict:
    resources = []
    for rtype in SUPPORTED_TYPES:
        profiles = supported_profiles(rtype)
        resources.append({
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            **({"supportedProfile": profiles} if profiles else {}),
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "multiple",
            "searchInclude": search_includes(rtype),
            "searchRevInclude": search_revincludes(rtype),
            "searchParam": search_params(rtype),
            "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}]
            + ([{"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                 "documentation": "The patient's compartment and what it references, through consent; _type, "
                                  "_since, _count; keyset pages"}] if rtype == "Patient" else [])
            + ([{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
                 "documentation": "Bulk Data v2 (Prefer: respond-async): Patient/$export (every record the caller "
                                  "may search) and Patient/{id}/$export (one record); _type, _since, _outputFormat "
                                  "ndjson; the same access rules as search"}] if rtype == "Patient" else [])
            + ([{"name": "access-history", "definition": "urn:fhir-dmp:OperationDefinition/access-history",
                 "documentation": "Who accessed the record, when, what and why, newest first, in French or English "
                                  "(_lang, Accept-Language); break-glass, refused and failed attempts flagged; for "
                                  "the patient and audit services"}] if rtype == "Patient" else [])
            + ([{"name": "copy", "definition": "urn:fhir-dmp:OperationDefinition/copy",
                 "documentation": "The patient's copy as one ZIP: the record as a FHIR Bundle, each attachment as "
                                  "a file, the access history, an index.html to read offline, SHA-256 of every "
                                  "file; what the caller may read"}] if rtype == "Patient" else [])
            + ([{"name": "explain-access", "definition": "urn:fhir-dmp:OperationDefinition/explain-access",
                 "documentation": "May this professional (actor) read or add to my record, or see this resource "
                                  "of it, and why (the Consents, labels or site policy that decide)?"},
                {"name": "destroy", "definition": "urn:fhir-dmp:OperationDefinition/destroy",
                 "documentation": "POST, on a closed record: remove it physically (audit kept); the answer is "
                                  "a receipt signed by the server (JWS) and the AuditEvent that carries it"}]
               if rtype == "Patient" else []),
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
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "Patient-controlled shared medical record (FHIR R4)"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": security(base_url),
            "documentation": "Transaction Bundles are atomic on every engine: MongoDB transactions on a "
                             "replica set, an application-level commit protocol elsewhere.",
            "resource": resources + conformance_resources(),
            "interaction": system,
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                           "documentation": "Bulk Data v2 system-level export of every type the caller may search "
                                            "(backend services with system/ scopes); files expire"}],
        }],
    }


async def capabilities(ctx: RequestContext, ix: Interaction) -> Result:
    return Result(status=200, resource=capability_statement(True, ctx.base_url, ctx.data.supported_profiles))
