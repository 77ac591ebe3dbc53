"""Index fields: what search needs from a resource, computed once at write time.

Searches never parse stored JSON (it is opaque bytes); they only see the fields `index_fields` returns,
merged into the stored document. Extraction runs on every create/update, so instead of interpreting
each parameter's FHIRPath with a general engine (fhirpathpy: ~0.35 ms for DocumentReference's
expressions alone), the generator precompiles the simple shapes R4 uses (`A.b.c`, `(A.b as T)`,
`.where(resolve() is T)`, `.where(system='x')`, `X.exists() and X != false`) into JSON key walks
with their FHIR types; fhirpathpy is only the fallback for expressions outside that subset.

Layout choices (see registry.py for names):
* values are stored as a scalar when the parameter can only hold one value and yields one entry,
  as an array otherwise. MongoDB refuses documents that put arrays in two fields of one compound
  index, so the compound indexes below only combine one possibly-array field with scalars.
* token and reference values are top-level strings or arrays of strings: equality on them is the
  most frequent search, MongoDB indexes it (multikey), and FerretDB v1's PostgreSQL backend pushes
  top-level scalar equality down to SQL (`_jsonb->'f' @> '"v"'`, which also matches array elements).
* dates are `{"lo", "hi"}` sub-documents (arrays of them when repeating): the spec's prefixes are
  all comparisons between two ranges (https://hl7.org/fhir/R4/search.html#prefix).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

from . import normalize as nz
from . import prefix
from .registry import (
    COMPOSITE,
    DATE,
    NUMBER,
    PREFIX,
    QUANTITY,
    REFERENCE,
    REFERENCE_IDENTIFIER,
    STORAGE_FIELDS,
    STRING,
    STRING_EXACT,
    TOKEN,
    TOKEN_OF_TYPE,
    TOKEN_TEXT,
    URI,
    Component,
    PathSpec,
    SearchParam,
    params_for,
)

Typed = tuple[Any, str]  # (JSON value, FHIR type name)


# --- path walking --------------------------------------------------------------------------------

def walk(resource: dict, spec: PathSpec) -> list[Typed]:
    """Values selected by one precompiled path, with their FHIR types."""
    nodes: list[Any] = [resource]
    last = len(spec.steps) - 1
    out: list[Typed] = []
    for i, alts in enumerate(spec.steps):
        nxt: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            for key, typ in alts:
                v = node.get(key)
                if v is None:
                    continue
                if i == last:
                    if isinstance(v, list):
                        out.extend((x, typ) for x in v if x is not None)
                    else:
                        out.append((v, typ))
                elif isinstance(v, list):
                    nxt.extend(v)
                else:
                    nxt.append(v)
        nodes = nxt
        if spec.where is not None and spec.where_at == i:  # `extension.where(url='…').value`
            key, want = spec.where
            nodes = [n for n in nodes if isinstance(n, dict) and n.get(key) == want]
        if not nodes and i < last:
            return []
    if spec.where and spec.where_at is None:
        key, want = spec.where
        out = [(v, t) for v, t in out if isinstance(v, dict) and v.get(key) == want]
    if spec.resolve_is:
        out = [
            (v, t) for v, t in out
            if isinstance(v, dict) and (
                nz.reference_type(v.get("reference") or "") == spec.resolve_is
                or (not v.get("reference") and v.get("type") == spec.resolve_is)
            )
        ]
    if spec.truthy:
        return [(any(v is not False for v, _ in out), "boolean")]
    return out


def _guess_type(v: Any, ptype: str) -> str:
    """FHIR type of a value returned by the FHIRPath fallback, which drops type information."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "decimal"
    if isinstance(v, str):
        return "dateTime" if ptype == "date" else "string"
    if isinstance(v, dict):
        if "coding" in v or "text" in v and ptype == "token":
            return "CodeableConcept"
        if "reference" in v or "identifier" in v and ptype == "reference":
            return "Reference"
        if "start" in v or "end" in v:
            return "Period"
        if "family" in v or "given" in v:
            return "HumanName"
        if "city" in v or "line" in v or "postalCode" in v:
            return "Address"
        if "value" in v and ptype == "quantity":
            return "Quantity"
        if "value" in v:
            return "Identifier"
        if "code" in v:
            return "Coding"
    return "string"


@lru_cache(maxsize=None)
def _fhirpath(expression: str) -> Callable[..., list]:
    import re

    from fhirpathpy import compile as fp_compile  # lazy: only needed outside the fast subset
    from fhirpathpy.models import models

    # fhirpathpy has no resolve(); for search extraction it only ever checks a reference's type.
    expr = re.sub(r"resolve\(\) is (\w+)", r"reference.startsWith('\1/')", expression)
    return fp_compile(expr, model=models["r4"])


def values_of(resource: dict, param: SearchParam) -> list[Typed]:
    if param.paths is not None:
        if len(param.paths) == 1:
            return walk(resource, param.paths[0])
        out: list[Typed] = []
        for spec in param.paths:
            out.extend(walk(resource, spec))
        return out
    return [(v, _guess_type(v, param.type)) for v in _fhirpath(param.expression)(resource)]


# --- per-type normalisers ------------------------------------------------------------------------

def _strings(v: Any, t: str) -> list[str]:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, dict):
        return []
    keys: tuple[str, ...]
    if t == "HumanName":
        keys = ("family", "given", "prefix", "suffix", "text")
    elif t == "Address":
        keys = ("line", "city", "district", "state", "postalCode", "country", "text")
    else:
        return []
    out: list[str] = []
    for k in keys:
        x = v.get(k)
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, list):
            out.extend(s for s in x if isinstance(s, str))
    return out


def _dedupe(items: list) -> list:
    return list(dict.fromkeys(items))


def _coding_entries(c: dict, tokens: list[str], texts: list[str]) -> None:
    if isinstance(c, dict):
        tokens.extend(nz.token_entries(c.get("system"), c.get("code")))
        if c.get("display"):
            texts.append(c["display"])


def _token(values: list[Typed], param: SearchParam, code_system: str | None = None) -> dict:
    tokens: list[str] = []
    texts: list[str] = []
    of_type: list[str] = []
    bare = param.bare_tokens
    for v, t in values:
        if t == "CodeableConcept" and isinstance(v, dict):
            for c in v.get("coding") or ():
                _coding_entries(c, tokens, texts)
            if v.get("text"):
                texts.append(v["text"])
        elif t == "Coding":
            _coding_entries(v, tokens, texts)
        elif t in ("Identifier", "ContactPoint") and isinstance(v, dict):
            value = v.get("value")
            tokens.extend(nz.token_entries(v.get("system"), value))
            if t == "Identifier":
                ty = v.get("type") or {}
                for c in ty.get("coding") or ():
                    if value and c.get("code"):
                        of_type.append(f"{nz.esc(c.get('system', ''))}|{nz.esc(c['code'])}|{nz.esc(value)}")
                    if c.get("display"):
                        texts.append(c["display"])
                if ty.get("text"):
                    texts.append(ty["text"])
        elif isinstance(v, (bool, str)):
            text = ("true" if v else "false") if isinstance(v, bool) else v
            if bare:
                tokens.append(text)
            else:  # a primitive among coded values: give it the `|code` forms too
                tokens.extend(nz.token_entries(code_system if t == "code" else None, text))
    out: dict = {}
    if tokens:
        out[param.f(TOKEN)] = _dedupe(tokens)
    if texts:
        out[param.f(TOKEN_TEXT)] = _dedupe([nz.fold(x) for x in texts])
    if of_type:
        out[param.f(TOKEN_OF_TYPE)] = _dedupe(of_type)
    return out


def reference_keys(resource: dict, param: SearchParam) -> list[str]:
    """The reference index entries of one parameter (`Type/id` for local references): what a
    `param=Type/id` search matches, for checks that must agree with the database exactly."""
    return _reference(values_of(resource, param), param).get(param.f(REFERENCE), [])


def _reference(values: list[Typed], param: SearchParam) -> dict:
    refs: list[str] = []
    idents: list[str] = []
    for v, t in values:
        if isinstance(v, dict):
            if t not in ("Reference", "BackboneElement") and "reference" not in v and "identifier" not in v:
                continue
            key = nz.reference_key(v.get("reference") or "")
            if key:
                refs.append(key)
            ident = v.get("identifier")
            if isinstance(ident, dict):
                idents.extend(nz.token_entries(ident.get("system"), ident.get("value")))
        elif isinstance(v, str):  # canonical / uri targets
            refs.append(v)
    out: dict = {}
    if refs:
        out[param.f(REFERENCE)] = _dedupe(refs)
    if idents:
        out[param.f(REFERENCE_IDENTIFIER)] = _dedupe(idents)
    return out


def _date_ranges(values: list[Typed]) -> list[dict[str, datetime]]:
    out = []
    for v, t in values:
        try:
            if isinstance(v, str):
                lo, hi = nz.date_range(v)
            elif isinstance(v, dict) and t == "Period" or isinstance(v, dict) and ("start" in v or "end" in v):
                lo, hi = nz.period_range(v.get("start"), v.get("end"))
            else:
                continue
        except ValueError:
            continue  # not a date: validation rejects such resources; never fail a write here
        out.append({"lo": lo, "hi": hi})
    return out


def _number(values: list[Typed]) -> list[float]:
    return [float(v) for v, _ in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _quantity(values: list[Typed]) -> list[dict]:
    out = []
    for v, _ in values:
        if isinstance(v, dict) and isinstance(v.get("value"), (int, float)):
            q = {"v": float(v["value"])}
            for src, dst in (("system", "s"), ("code", "c"), ("unit", "u")):
                if v.get(src):
                    q[dst] = v[src]
            out.append(q)
    return out


def _component_entries(node: Any, comp: Component) -> list[str]:
    values: list[Typed] = []
    for spec in comp.paths or ():
        values.extend(walk(node, spec))
    entries: list[str] = []
    for v, t in values:
        # every part is escaped (normalize.esc) so that "$" only ever separates components
        if comp.type == "reference" and isinstance(v, dict):
            key = nz.reference_key(v.get("reference") or "")
            if key:
                entries.append(nz.esc(key))
        elif comp.type == "token":
            if isinstance(v, dict):
                codings = v.get("coding") if t == "CodeableConcept" else [v]
                for c in codings or ():
                    entries.extend(nz.token_entries(c.get("system"), c.get("code") or c.get("value")))
            elif isinstance(v, bool):
                entries.append("true" if v else "false")
            elif isinstance(v, str):
                entries.append(nz.esc(v))  # a bare code: its system is implied (see mongo.compile)
        elif comp.type == "string" and isinstance(v, str):
            entries.append(nz.esc(nz.fold(v)))
        elif comp.type == "uri" and isinstance(v, str):
            entries.append(nz.esc(v))
    return _dedupe(entries)


def _composite(values: list[Typed], param: SearchParam) -> list[str]:
    out: list[str] = []
    for node, _ in values:
        combos = [""]
        for i, comp in enumerate(param.components):
            entries = _component_entries(node, comp)
            if not entries:
                combos = []
                break
            combos = [(c + "$" if i else "") + e for c in combos for e in entries]
        out.extend(combos)
    return _dedupe(out)


def _shape(param: SearchParam, items: list) -> Any:
    """Scalar when the parameter is single-valued and produced one entry (see module docstring)."""
    if not param.multiple and len(items) == 1:
        return items[0]
    if not param.multiple and param.type == "date":
        return items[0]  # a single-valued element can only carry one range; ignore malformed extras
    return items


def param_fields(resource: dict, param: SearchParam) -> dict:
    values = values_of(resource, param)
    if not values:
        return {}
    ptype = param.type
    if ptype == "string":
        raw = [s for v, t in values for s in _strings(v, t)]
        if not raw:
            return {}
        folded = _dedupe([nz.fold(s) for s in raw])
        exact = _dedupe([nz.exact(s) for s in raw])
        out = {param.f(STRING): _shape(param, folded), param.f(STRING_EXACT): _shape(param, exact)}
        if prefix.prefixed(param):
            tokens = prefix.tokens(folded)
            if tokens:
                out[param.f(PREFIX)] = tokens
        return out
    if ptype == "token":
        if param.bare_tokens or not param.paths or not any(s.code_system for s in param.paths):
            found = _token(values, param)
        else:  # codes whose system is implied differ per path: keep each path's system
            found = {}
            for spec in param.paths:
                for k, v in _token(walk(resource, spec), param, spec.code_system).items():
                    found[k] = _dedupe(found.get(k, []) + v)
        return {k: _shape(param, v) for k, v in found.items()}
    if ptype == "reference":
        return {k: _shape(param, v) for k, v in _reference(values, param).items()}
    if ptype == "date":
        ranges = _date_ranges(values)
        return {param.f(DATE): _shape(param, ranges)} if ranges else {}
    if ptype == "uri":
        uris = _dedupe([v for v, _ in values if isinstance(v, str)])
        return {param.f(URI): _shape(param, uris)} if uris else {}
    if ptype == "number":
        nums = _number(values)
        return {param.f(NUMBER): _shape(param, nums)} if nums else {}
    if ptype == "quantity":
        qs = _quantity(values)
        return {param.f(QUANTITY): _shape(param, qs)} if qs else {}
    if ptype == "composite":
        entries = _composite(values, param)
        return {param.f(COMPOSITE): _shape(param, entries)} if entries else {}
    return {}


@lru_cache(maxsize=None)
def _indexed_params(rtype: str) -> tuple[SearchParam, ...]:
    return tuple(p for code, p in params_for(rtype).items() if code not in STORAGE_FIELDS)


def index_fields(resource: dict) -> dict:
    """The search index fields of one resource, to merge into its stored document.

    Only non-empty fields are returned, so `{field: {"$exists": false}}` means "no value" (:missing).
    `_id` and `_lastUpdated` are not repeated here: the storage layer's `_id` and `_lu` serve them.
    """
    out: dict = {}
    for param in _indexed_params(resource.get("resourceType", "")):
        out.update(param_fields(resource, param))
    return out


# --- indexes -------------------------------------------------------------------------------------

# The frequent queries per type, as lists of (parameter code, index field kind[, sub-key]). A compound
# index only ever holds one parameter that may be an array (checked in index_specs). Every reference
# through which a resource is in a patient's compartment (access/compartment.py) has an index of its
# own, so that a patient token's `$or` over them is served branch by branch; every parameter of
# prefix.PREFIXED gets a single-field index on its prefix tokens (added by index_keys).
_INDEXES: dict[str, list[list[tuple[str, str]]]] = {
    "Patient": [
        [("identifier", TOKEN)], [("birthdate", DATE + ".lo")], [("telecom", TOKEN)], [("link", REFERENCE)],
        [("general-practitioner", REFERENCE)],
    ],
    "Practitioner": [[("identifier", TOKEN)]],
    "PractitionerRole": [[("identifier", TOKEN)], [("practitioner", REFERENCE)], [("organization", REFERENCE)]],
    "Organization": [[("identifier", TOKEN)]],
    "Consent": [[("patient", REFERENCE), ("date", DATE + ".lo")], [("identifier", TOKEN)], [("actor", REFERENCE)],
                [("consentor", REFERENCE)]],
    "DocumentReference": [
        [("identifier", TOKEN)],
        [("subject", REFERENCE), ("type", TOKEN), ("date", DATE + ".lo")],
        [("patient", REFERENCE), ("type", TOKEN), ("date", DATE + ".lo")],
        [("patient", REFERENCE), ("date", DATE + ".lo")],
        [("author", REFERENCE)],
        [("relatesto", REFERENCE)],
    ],
    "AuditEvent": [
        [("entity", REFERENCE), ("date", DATE + ".lo")],
        [("patient", REFERENCE), ("date", DATE + ".lo")],
        [("agent", REFERENCE), ("date", DATE + ".lo")],
        [("date", DATE + ".lo")],
    ],
    "Provenance": [[("target", REFERENCE)], [("patient", REFERENCE), ("recorded", DATE + ".lo")],
                   [("agent", REFERENCE), ("recorded", DATE + ".lo")]],  # one insert per write: few indexes
    "List": [
        [("identifier", TOKEN)], [("patient", REFERENCE)], [("subject", REFERENCE)], [("source", REFERENCE)],
        [("item", REFERENCE)],
    ],
    "Binary": [[("securitycontext", REFERENCE)]],
}


def index_keys(rtype: str) -> list[list[tuple[str, int]]]:
    """Key lists of the indexes for `rtype` (pymongo-free so it can be checked without a driver)."""
    params = params_for(rtype)
    out: list[list[tuple[str, int]]] = [[("_lu", 1)]]
    prefixed = [[(code, PREFIX)] for code in sorted(prefix.PREFIXED.get(rtype, ()))]
    for spec in _INDEXES.get(rtype, []) + prefixed:
        keys = []
        arrays = 0
        for code, kind in spec:
            param = params[code]
            base_kind, _, sub = kind.partition(".")
            keys.append((param.f(base_kind) + (f".{sub}" if sub else ""), 1))
            if param.multiple or param.type in ("token", "string", "composite") or base_kind == PREFIX:
                # tokens and strings can yield several entries even for a single-valued element
                arrays += 1
        if arrays > 1:  # pragma: no cover - guarded by a unit test over every type
            raise AssertionError(f"{rtype} index {spec} would index two array fields")
        out.append(keys)
    return out


def index_specs(rtype: str) -> list:
    """pymongo IndexModels for the common queries of `rtype` (plus `_lu` for _lastUpdated and paging)."""
    from pymongo import IndexModel

    models = []
    for keys in index_keys(rtype):
        name = "sp_" + "_".join(k.replace(".", "_") for k, _ in keys)
        models.append(IndexModel(keys, name=name))
    return models
