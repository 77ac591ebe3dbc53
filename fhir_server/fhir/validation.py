"""Validation of incoming resources: structure, FHIR JSON rules, required bindings, references.

fhir.resources (R4B models, which accept R4 JSON for our types) checks structure and datatypes but
neither required code bindings nor some JSON rules (it accepts `"name": []` and `null`), so those
are checked here. Spec: https://hl7.org/fhir/R4/json.html and https://hl7.org/fhir/R4/validation.html.

Failures are split as https://hl7.org/fhir/R4/http.html#2.21.0.17 suggests: content that is not
valid FHIR (structure, datatypes, JSON rules, required bindings) is 400; content that is valid FHIR
but breaks this server's rules (an unresolvable urn:uuid outside a transaction, an INS whose key
does not match its NIR: fhir/identifiers.py) is 422.
"""

from __future__ import annotations

import importlib
import re
import typing
from functools import cache

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_server.fhir.bindings import check_required_bindings
from fhir_server.fhir.dmp import record_issues
from fhir_server.fhir.identifiers import identifier_issues
from fhir_server.fhir.narrative import narrative_problem
from fhir_server.fhir.outcome import FhirError, Issue
from fhir_server.fhir.types import SUPPORTED, is_valid_id, reference_problem

MAX_ISSUES = 50
# Deepest JSON nesting accepted (objects and arrays both count). Real FHIR resources stay far below
# (a Questionnaire nesting items 20 deep is about 45); validation and the recursive walks over a
# resource would otherwise hit Python's recursion limit (a 500 with a huge traceback).
MAX_DEPTH = 100
# R4 strings: no control characters other than tab, CR and LF (https://hl7.org/fhir/R4/datatypes.html#string)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def json_depth_problem(value, limit: int = MAX_DEPTH) -> str | None:
    """Why `value` nests too deeply, or None; iterative, so any depth is safe to check."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return f"the JSON nests deeper than {limit} levels"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return None


def check_depth(value) -> None:
    problem = json_depth_problem(value)
    if problem is not None:
        raise FhirError(400, "too-costly", problem)


def parse_json_body(body: bytes) -> dict:
    """Decode a request body that must hold one JSON object (a resource)."""
    if not body:
        raise FhirError(400, "structure", "the request body is empty; a FHIR resource was expected")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "recursion" in exc.msg.lower():
            raise FhirError(400, "too-costly", f"the JSON nests deeper than {MAX_DEPTH} levels")
        raise FhirError(400, "structure", f"the request body is not valid JSON: {exc.msg} (at char {exc.pos})")
    if not isinstance(value, dict):
        raise FhirError(400, "structure", "the request body must be a JSON object (a FHIR resource)")
    check_depth(value)
    return value


def resource_type_of(resource: dict, expected: str | None = None) -> str:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise FhirError(400, "structure", "the resource has no resourceType", ["resourceType"])
    if expected is not None and rtype != expected:
        raise FhirError(
            400, "invalid", f"resourceType '{rtype}' does not match the endpoint's type '{expected}'", ["resourceType"]
        )
    return rtype


@cache
def _model(rtype: str):
    return get_fhir_model_class(rtype)


def preload_models(types: frozenset[str] = SUPPORTED | {"Bundle"}) -> int:
    """Import now, at start-up, the model of each of `types` and of every datatype and element
    their fields can hold; returns how many models that is.

    fhir.resources imports a model's module the first time it is needed, and a field's datatype
    the first time a value of it is validated: in a running server that was the first request of
    each type, on the event loop (45 ms for the first AuditEvent, 25 ms for a first
    DocumentReference with the usual elements; bench/first_use.py). Walking the fields costs about
    0.2 s once. Resources a field may hold (`contained`, `Bundle.entry.resource`) are followed
    only for the supported types: any other type is refused by the server anyway."""
    seen: set[type] = set()
    pending = [_model(rtype) for rtype in sorted(types)]
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        annotations = [field.annotation for field in model.model_fields.values()]
        while annotations:
            annotation = annotations.pop()
            annotations.extend(typing.get_args(annotation))
            path = getattr(annotation, "_model_klass", None)  # fhir.resources' lazy reference to a model
            if not isinstance(path, str) or "." not in path:
                continue
            module, name = path.rsplit(".", 1)
            target = getattr(importlib.import_module(module), name, None)
            if target is not None and (not target.has_resource_base() or target.__name__ in types):
                pending.append(target)
    return len(seen)


def _loc_to_path(rtype: str, loc: tuple) -> str:
    out = rtype
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "__root__":
            out += f".{part}"
    return out


def structural_issues(resource: dict, rtype: str) -> list[Issue]:
    try:
        _model(rtype).model_validate(resource)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False, include_input=False)[:MAX_ISSUES]:
            path = _loc_to_path(rtype, err["loc"])
            code = "structure" if err["type"] in ("extra_forbidden", "missing") else "value"
            if err["type"] == "extra_forbidden":
                msg = f"{path}: unknown element"
            elif err["type"] == "missing":
                msg = f"{path}: required element is missing"
            else:
                msg = f"{path}: {err['msg']}"
            issues.append(Issue("error", code, msg, [path]))
        return issues
    except (TypeError, ValueError) as exc:  # model-level validators raising plain errors
        return [Issue("error", "structure", f"{rtype}: {exc}", [rtype])]
    return []


def json_rule_issues(resource: dict, rtype: str, *, allow_urn: bool) -> tuple[list[Issue], list[Issue]]:
    """(not-FHIR issues, business-rule issues) from one walk over the JSON.

    FHIR JSON forbids null properties, empty strings, empty arrays and empty objects
    (https://hl7.org/fhir/R4/json.html#2.6.2); nulls are allowed inside arrays only to keep
    primitive values and their `_element` extensions aligned.
    """
    structure: list[Issue] = []
    business: list[Issue] = []

    def walk(node, path: str) -> None:
        if len(structure) + len(business) >= MAX_ISSUES:
            return
        if isinstance(node, dict):
            if not node:
                structure.append(Issue("error", "structure", f"{path}: empty objects are not allowed", [path]))
            for key, value in node.items():
                child = f"{path}.{key}"
                if value is None:
                    structure.append(Issue("error", "structure", f"{child}: null is not allowed", [child]))
                elif key == "reference" and isinstance(value, str):
                    problem = reference_problem(value, allow_urn=allow_urn)
                    if problem is not None:
                        target = business if "only be resolved" in problem else structure
                        target.append(Issue("error", "value" if target is structure else "business-rule",
                                            f"{child}: {problem}", [child]))
                else:
                    walk(value, child)
        elif isinstance(node, list):
            if not node:
                structure.append(Issue("error", "structure", f"{path}: empty arrays are not allowed", [path]))
            for i, item in enumerate(node):
                if item is not None:
                    walk(item, f"{path}[{i}]")
        elif isinstance(node, str):
            if path.endswith(".text.div"):  # Narrative.div of the resource or of a contained one
                problem = narrative_problem(node)
                if problem is not None:
                    structure.append(Issue("error", "value", f"{path}: {problem}", [path]))
            elif node == "":
                structure.append(Issue("error", "value", f"{path}: empty strings are not allowed", [path]))
            elif _CONTROL.search(node):
                structure.append(Issue("error", "value", f"{path}: control characters other than tab, CR and LF "
                                                         "are not allowed in FHIR strings", [path]))

    walk(resource, rtype)
    return structure, business


def validate_resource(resource: dict, *, expected_type: str | None = None, allow_urn: bool = False) -> str:
    """Raise a FhirError listing every problem found, or return the resource type."""
    check_depth(resource)  # before anything recursive walks it
    rtype = resource_type_of(resource, expected_type)
    if rtype not in SUPPORTED:
        raise FhirError(400, "not-supported", f"resource type '{rtype}' is not stored by this server", ["resourceType"])
    rid = resource.get("id")
    if rid is not None and (not isinstance(rid, str) or not is_valid_id(rid)):
        raise FhirError(400, "value", "id must match [A-Za-z0-9\\-.]{1,64}", [f"{rtype}.id"])
    issues = structural_issues(resource, rtype)
    structure, business = json_rule_issues(resource, rtype, allow_urn=allow_urn)
    issues += structure
    issues += [
        Issue("error", "code-invalid", b.diagnostics, [b.expression]) for b in check_required_bindings(resource)
    ]
    if issues:
        raise FhirError(400, issues[0].code, issues[0].diagnostics, issues=issues[:MAX_ISSUES])
    business += identifier_issues(resource, rtype) + record_issues(resource, rtype)
    if business:
        raise FhirError(422, "business-rule", business[0].diagnostics, issues=business)
    return rtype
