"""FHIR R4 *required* code bindings, checked against the official value sets.

fhir.resources validates structure only and accepts e.g. ``Patient.gender = "robot"``.
This module checks every element with a ``required`` binding (``binding.strength``) of
the covered resource types against the value set's codes, as listed in
``fhir_server/data/required_bindings.json``. That file is generated from the FHIR R4
4.0.1 definitions by ``tools/gen_required_bindings.py`` (see its docstring to regenerate);
value sets that cannot be enumerated (MIME types, ISO 4217 currencies, ...) are listed
under its ``"skipped"`` key and are not checked.

Rules (https://hl7.org/fhir/R4/terminologies.html#required):

* ``code`` (and other primitive) elements: the string must be one of the value set's codes;
* ``Coding``: its (system, code) must be in the value set;
* ``CodeableConcept``: at least one of its codings must be in the value set.

(None of the covered R4 resource types has a required binding on a Coding or
CodeableConcept today, but the generator and checker support them.)

The JSON is parsed once at import into per-type lookup tables; a check walks only the
keys present in the resource. Wrong JSON types are skipped (structural validation is
someone else's job); the checker never raises on any JSON-like input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources as _resources
from typing import Any

__all__ = ["BindingIssue", "BindingChecker", "check_required_bindings", "CHECKER"]

DATA_FILE = "required_bindings.json"

# Spec kinds (first item of the per-element tuple).
_TYPE = 0  # (_TYPE, child_table)
_RESOURCE = 1  # (_RESOURCE,)
_CODE = 2  # (_CODE, frozenset[str], value_set_url)
_CODING = 3  # (_CODING, frozenset[(system, code)], value_set_url, child_table | None)
_CONCEPT = 4  # (_CONCEPT, frozenset[(system, code)], value_set_url, child_table | None)

_MAX_SHOWN = 80


@dataclass(frozen=True, slots=True)
class BindingIssue:
    expression: str  # FHIRPath of the offending element, e.g. "Patient.name[0].use"
    diagnostics: str  # human message naming the bad code and the value set URL


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) > _MAX_SHOWN:
        value = value[:_MAX_SHOWN] + "..."
    return repr(value)


class BindingChecker:
    """Compiled form of a required_bindings.json document (see tools/gen_required_bindings.py)."""

    __slots__ = ("_roots", "value_sets", "skipped", "checked", "fhir_version")

    def __init__(self, data: dict[str, Any]) -> None:
        self.fhir_version: str = data.get("fhirVersion", "")
        self.value_sets: dict[str, dict[str, frozenset[str]]] = {
            url: {system: frozenset(codes) for system, codes in by_system.items()}
            for url, by_system in data["valueSets"].items()
        }
        self.skipped: tuple[dict[str, str], ...] = tuple(data.get("skipped", ()))
        self.checked: tuple[str, ...] = tuple(data.get("checked", ()))
        codes = {url: frozenset().union(*vs.values()) for url, vs in self.value_sets.items()}
        pairs = {
            url: frozenset((system, code) for system, cs in vs.items() for code in cs)
            for url, vs in self.value_sets.items()
        }
        tables: dict[str, dict[str, tuple]] = {key: {} for key in data["types"]}
        for key, elements in data["types"].items():
            table = tables[key]
            for name, spec in elements.items():
                kind = spec[0]
                if kind == "T":
                    table[name] = (_TYPE, tables[spec[1]])
                elif kind == "R":
                    table[name] = (_RESOURCE,)
                elif kind == "code":
                    table[name] = (_CODE, codes[spec[1]], spec[1])
                elif kind in ("Coding", "CodeableConcept"):
                    child = tables[spec[2]] if len(spec) > 2 and spec[2] else None
                    table[name] = (_CODING if kind == "Coding" else _CONCEPT, pairs[spec[1]], spec[1], child)
                else:
                    raise ValueError(f"{key}.{name}: unknown binding spec {spec!r}")
        self._roots: dict[str, dict[str, tuple]] = {rt: tables[rt] for rt in data["resources"] if rt in tables}

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(self._roots)

    def check(self, resource: Any) -> list[BindingIssue]:
        """Issues for every required-binding violation in ``resource`` (and nested resources)."""
        issues: list[BindingIssue] = []
        if not isinstance(resource, dict):
            return issues
        rt = resource.get("resourceType")
        if not isinstance(rt, str):
            return issues
        table = self._roots.get(rt)
        if table is None:
            return issues
        roots = self._roots
        stack: list[tuple[dict, dict, str]] = [(resource, table, rt)]
        while stack:
            node, table, path = stack.pop()
            children: list[tuple[dict, dict, str]] = []
            for name, value in node.items():
                spec = table.get(name)
                if spec is None:
                    continue
                kind = spec[0]
                if kind == _TYPE:
                    if isinstance(value, dict):
                        children.append((value, spec[1], f"{path}.{name}"))
                    elif isinstance(value, list):
                        child = spec[1]
                        for i, item in enumerate(value):
                            if isinstance(item, dict):
                                children.append((item, child, f"{path}.{name}[{i}]"))
                elif kind == _CODE:
                    allowed = spec[1]
                    if isinstance(value, str):
                        if value not in allowed:
                            issues.append(_code_issue(f"{path}.{name}", value, spec[2]))
                    elif isinstance(value, list):
                        for i, item in enumerate(value):
                            if isinstance(item, str) and item not in allowed:
                                issues.append(_code_issue(f"{path}.{name}[{i}]", item, spec[2]))
                elif kind == _RESOURCE:
                    if isinstance(value, dict):
                        nested = value.get("resourceType")
                        if isinstance(nested, str) and nested in roots:
                            children.append((value, roots[nested], f"{path}.{name}"))
                    elif isinstance(value, list):
                        for i, item in enumerate(value):
                            if isinstance(item, dict):
                                nested = item.get("resourceType")
                                if isinstance(nested, str) and nested in roots:
                                    children.append((item, roots[nested], f"{path}.{name}[{i}]"))
                else:  # Coding / CodeableConcept
                    if isinstance(value, dict):
                        self._coded(spec, value, f"{path}.{name}", issues, children)
                    elif isinstance(value, list):
                        for i, item in enumerate(value):
                            if isinstance(item, dict):
                                self._coded(spec, item, f"{path}.{name}[{i}]", issues, children)
            if children:
                stack.extend(reversed(children))
        return issues

    @staticmethod
    def _coded(spec: tuple, value: dict, path: str, issues: list[BindingIssue], children: list) -> None:
        kind, allowed, url, child = spec
        if kind == _CODING:
            key = _coding_key(value)
            if key is not None and key not in allowed:
                issues.append(
                    BindingIssue(
                        path,
                        f"{path}: code {_show(key[1])} (system {_show(key[0])}) "
                        f"is not in the required value set {url}",
                    )
                )
        else:
            codings = value.get("coding")
            if codings is None:
                codings = []
            if isinstance(codings, list):
                keys = [k for k in map(_coding_key, codings) if k is not None]
                if not any(k in allowed for k in keys):
                    found = ", ".join(f"{k[0]}|{k[1]}" for k in keys) or "none"
                    issues.append(
                        BindingIssue(
                            path,
                            f"{path}: no coding is in the required value set {url} (codings: {found[:200]})",
                        )
                    )
        if child is not None:
            children.append((value, child, path))


def _coding_key(coding: Any) -> tuple[str | None, str | None] | None:
    """(system, code) of a Coding JSON object, or None when it is not checkable JSON."""
    if not isinstance(coding, dict):
        return None
    system = coding.get("system")
    code = coding.get("code")
    if (system is not None and not isinstance(system, str)) or (code is not None and not isinstance(code, str)):
        return None
    return (system, code)


def _code_issue(path: str, value: str, url: str) -> BindingIssue:
    return BindingIssue(path, f"{path}: {_show(value)} is not in the required value set {url}")


def _load() -> dict[str, Any]:
    text = _resources.files("fhir_server").joinpath("data").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


CHECKER = BindingChecker(_load())


def check_required_bindings(resource: dict) -> list[BindingIssue]:
    """Required-binding violations of a (structurally valid) FHIR R4 resource JSON.

    Resource types without a table (not covered) give no issues; so do nested resources
    (Bundle.entry.resource, contained, Parameters.parameter.resource) of uncovered types.
    """
    return CHECKER.check(resource)
