"""Content negotiation: which FHIR formats we speak, from `_format`, Accept and Content-Type.

Spec: https://hl7.org/fhir/R4/http.html#mime-type. JSON only (XML is declined with 406/415).
"""

from __future__ import annotations

from fhir_server.fhir.outcome import FhirError

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
_JSON_TYPES = {FHIR_JSON, "application/json", "application/json+fhir", "text/json"}
_FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": FHIR_JSON, "application/fhir+json": FHIR_JSON,
                   "application/json+fhir": FHIR_JSON, "text/json": FHIR_JSON}
_XML = {"xml", "text/xml", "application/xml", "application/fhir+xml", "application/xml+fhir", "ttl", "turtle",
        "text/turtle", "application/fhir+turtle", "html", "text/html"}


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def negotiate(format_param: str | None, accept: str | None) -> None:
    """Raise 406 unless the client can take FHIR JSON."""
    if format_param is not None:
        fmt = format_param.strip().lower().replace(" ", "+")
        if fmt in _FORMAT_ALIASES:
            return
        raise FhirError(406, "not-supported", f"_format '{format_param}' is not supported; use json")
    if not accept:
        return
    for part in accept.split(","):
        mt = media_type(part)
        q = 1.0
        for param in part.split(";")[1:]:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0 and (mt in _JSON_TYPES or mt in ("*/*", "application/*", "") or mt.endswith("+json")):
            return
    raise FhirError(406, "not-supported", "this server only produces application/fhir+json")


def accepts_fhir(format_param: str | None, accept: str | None) -> bool:
    """Whether a Binary read should answer FHIR JSON rather than the raw content."""
    if format_param is not None:
        return True
    if not accept:
        return True
    types = {media_type(p) for p in accept.split(",")}
    return bool(types & (_JSON_TYPES | _XML)) or any(t.endswith("+json") for t in types)


def require_json_body(content_type: str | None) -> None:
    mt = media_type(content_type)
    if mt in _JSON_TYPES or mt.endswith("+json"):
        return
    if not mt:
        raise FhirError(415, "not-supported", "Content-Type is required; use application/fhir+json")
    raise FhirError(415, "not-supported", f"Content-Type '{mt}' is not supported; use application/fhir+json")
