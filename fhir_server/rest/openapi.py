"""An OpenAPI 3.0 description of the HTTP surface: the FHIR REST interactions of every stored type
(with their search parameters) and the SMART authorization server's endpoints, served at
`GET /openapi.json` (public, like the CapabilityStatement: it holds no data and no secret).

It exists for tools that speak OpenAPI rather than FHIR: API gateways, client generators, and our
own route fuzzing (tests/test_openapi_fuzz.py, with schemathesis, issue 12 item 6). Bodies are
described loosely (a FHIR resource is any JSON object with a `resourceType`): the
CapabilityStatement and the StructureDefinitions under /fhir are the authority on their content.
"""

from __future__ import annotations

from functools import lru_cache

from fhir_server.search.registry import params_for

RESULT_PARAMS = ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor",
                 "_format", "_pretty")
FHIR_JSON = "application/fhir+json"


def _query(names) -> list[dict]:
    return [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}} for n in names]


def _path(*names: str) -> list[dict]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def _resource(rtype: str | None) -> dict:
    props = {"resourceType": {"type": "string", **({"enum": [rtype]} if rtype else {})}}
    return {"required": True, "content": {FHIR_JSON: {"schema": {"type": "object", "properties": props,
                                                                "required": ["resourceType"]}}}}


def _form(fields: dict[str, dict]) -> dict:
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "properties": fields}}}}


def _op(summary: str, params: list[dict] | None = None, body: dict | None = None) -> dict:
    op: dict = {"summary": summary, "responses": {"default": {"description": "FHIR resource or OperationOutcome"}}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


@lru_cache(maxsize=4)
def document(types: tuple[str, ...], version: str) -> dict:
    """The description for the stored `types`."""
    paths: dict[str, dict] = {
        "/fhir/metadata": {"get": _op("CapabilityStatement")},
        "/fhir": {"post": _op("batch or transaction Bundle", body=_resource("Bundle"))},
        "/fhir/_history": {"get": _op("system history", _query(("_since", "_count", "_cursor")))},
    }
    for rtype in types:
        search = _query(sorted(params_for(rtype)) + list(RESULT_PARAMS))
        paths[f"/fhir/{rtype}"] = {
            "get": _op(f"search {rtype}", search),
            "post": _op(f"create {rtype}", body=_resource(rtype)),
            "put": _op(f"conditional update {rtype}", search, _resource(rtype)),
            "delete": _op(f"conditional delete {rtype}", search),
        }
        paths[f"/fhir/{rtype}/_search"] = {"post": _op(f"search {rtype} (form)", body=_form(
            {n: {"type": "string"} for n in sorted(params_for(rtype))[:40]}))}
        paths[f"/fhir/{rtype}/_history"] = {"get": _op(f"{rtype} history", _query(("_since", "_count", "_cursor")))}
        paths[f"/fhir/{rtype}/{{id}}"] = {
            "get": _op(f"read {rtype}", _path("id")),
            "put": _op(f"update {rtype}", _path("id"), _resource(rtype)),
            "patch": _op(f"JSON Patch {rtype}", _path("id"), {"required": True, "content": {
                "application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}}}}),
            "delete": _op(f"delete {rtype}", _path("id")),
        }
        paths[f"/fhir/{rtype}/{{id}}/_history"] = {"get": _op(f"{rtype} instance history",
                                                              _path("id") + _query(("_since", "_count", "_cursor")))}
        paths[f"/fhir/{rtype}/{{id}}/_history/{{vid}}"] = {"get": _op(f"vread {rtype}", _path("id", "vid"))}
        paths[f"/fhir/{rtype}/$validate"] = {"post": _op(f"validate {rtype}", body=_resource(None))}
    paths["/fhir/StructureDefinition"] = {"get": _op("the record's profiles (read-only)", _query(("url", "_count")))}
    paths["/fhir/StructureDefinition/{id}"] = {"get": _op("one profile", _path("id"))}
    paths["/fhir/Patient/{id}/$everything"] = {"get": _op("the patient's record", _path("id") + _query(
        ("_type", "_since", "_count", "_cursor")))}
    paths["/fhir/Patient/{id}/$copy"] = {"get": _op("the patient's copy (ZIP)", _path("id"))}
    paths["/fhir/Patient/{id}/$explain-access"] = {"get": _op("who may read or add, and why", _path("id") + _query(
        ("actor", "resource")))}
    paths["/fhir/Patient/{id}/$access-history"] = {"get": _op("who accessed the record, when, what and why",
                                                              _path("id") + _query(("_lang", "_count", "_cursor")))}
    paths["/fhir/Patient/{id}/$destroy"] = {"post": _op("destroy a closed record (signed receipt)",
                                                        _path("id") + _query(("reason",)))}
    paths["/fhir/$export"] = {"get": _op("Bulk Data export (Prefer: respond-async)", _query(
        ("_type", "_since", "_outputFormat")))}
    paths["/fhir/Patient/$export"] = {"get": _op("Bulk Data export of every record the caller may search",
                                                 _query(("_type", "_since", "_outputFormat")))}
    paths["/fhir/Patient/{id}/$export"] = {"get": _op("Bulk Data export of one record", _path("id") + _query(
        ("_type", "_since", "_outputFormat")))}
    paths["/fhir/AuditEvent/$verify"] = {"get": _op("check the audit trail's hash chains")}
    paths["/fhir/.well-known/smart-configuration"] = {"get": _op("SMART configuration")}
    paths["/auth/jwks"] = {"get": _op("the signing keys")}
    paths["/auth/authorize"] = {"get": _op("authorization request", _query(
        ("response_type", "client_id", "redirect_uri", "scope", "state", "aud", "code_challenge",
         "code_challenge_method", "launch", "purpose_of_use", "btg_reason")))}
    secret = {"client_id": {"type": "string"}, "client_secret": {"type": "string"},
              "client_assertion_type": {"type": "string"}, "client_assertion": {"type": "string"}}
    paths["/auth/token"] = {"post": _op("token", body=_form({
        "grant_type": {"type": "string", "enum": ["authorization_code", "refresh_token", "client_credentials"]},
        "code": {"type": "string"}, "redirect_uri": {"type": "string"}, "code_verifier": {"type": "string"},
        "refresh_token": {"type": "string"}, "scope": {"type": "string"}, **secret}))}
    paths["/auth/introspect"] = {"post": _op("token introspection", body=_form({"token": {"type": "string"},
                                                                                **secret}))}
    paths["/auth/revoke"] = {"post": _op("token revocation", body=_form({"token": {"type": "string"}, **secret}))}
    paths["/auth/login"] = {"post": _op("sign-in form", body=_form({"username": {"type": "string"},
                                                                     "password": {"type": "string"},
                                                                     "flow": {"type": "string"}}))}
    return {"openapi": "3.0.3",
            "info": {"title": "FHIR R4 health-record server", "version": version,
                     "description": "FHIR R4 REST API (see /fhir/metadata) and SMART App Launch 2.2 authorization"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}, {}],
            "paths": paths}
