"""Compile a parsed search (parse.SearchQuery) into a MongoDB filter and sort over our index fields.

Chains and `_has` need other collections, so they are resolved first (`resolve`, given a callback that
runs a find) into lists of "Type/id" references; `compile(query, resolved_chains)` is then a pure
function, which is what lets tests compare it against a plain-Python oracle.

Filter shape matters for FerretDB v1 (our embedded engine): its PostgreSQL backend pushes down only
top-level `{field: scalar}` / `{field: {"$eq"|"$ne": scalar}}` conditions (ANDed), plus `$in`, `$or`
and `$and` with our build patch (scripts/build-ferretdb.sh), never ranges, dotted paths or `$regex`;
the SQLite backend only `{_id: value}`. So equality clauses are emitted as top-level keys whenever
possible and everything else goes to `$and`, and string prefix search is an equality on stored
prefix tokens (search/prefix.py) rather than an anchored regex; MongoDB treats both forms the same.

Date semantics follow the prefix table of https://hl7.org/fhir/R4/search.html#prefix, with the search
value's range [sl, sh) and each target value's range [lo, hi):
    eq  sl <= lo and hi <= sh            (search range contains target)
    ne  not eq
    gt  hi > sh                          (range above the search value overlaps target)
    lt  lo < sl                          (range below overlaps target)
    ge  gt or eq;  le  lt or eq
    sa  lo >= sh;  eb  hi <= sl          (no overlap, target entirely above / below)
    ap  overlap with the search range widened by 10% of its distance to now
A resource matches when any one of its values does. Numbers follow #number: eq/ne/ap use the range
implied by the significant digits, gt/lt/ge/le compare with the exact value.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Union

from . import normalize as nz
from . import prefix
from .parse import (
    Clause,
    CompositeValue,
    DateValue,
    HasClause,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SearchError,
    SearchQuery,
    StringValue,
    TokenValue,
    UriValue,
)
from .registry import (
    COMPOSITE,
    DATE,
    NUMBER,
    QUANTITY,
    REFERENCE,
    REFERENCE_IDENTIFIER,
    STRING,
    STRING_EXACT,
    TOKEN,
    TOKEN_OF_TYPE,
    TOKEN_TEXT,
    URI,
    SearchParam,
    params_for,
)

MAX_REFERENCE_EXPANSION = 20  # `subject=123` -> $in of Type/123 per target type up to this many


def _or(conds: list[dict]) -> dict:
    conds = [c for c in conds if c is not None]
    if len(conds) == 1:
        return conds[0]
    return {"$or": conds}


def _eq_or_in(field: str, entries: list) -> dict:
    entries = list(dict.fromkeys(entries))
    if len(entries) == 1:
        return {field: entries[0]}
    return {field: {"$in": entries}}


NOTHING: dict = {"_id": {"$in": []}}  # a condition no document satisfies


# --- tokens --------------------------------------------------------------------------------------

def token_entry(param: SearchParam, v: TokenValue) -> str | None:
    """The stored entry a token search value must equal (see normalize.token_entries)."""
    if v.code is None and v.system is None:
        return None
    if param.bare_tokens or param.code == "_id":
        # primitives are stored as is; a system can only be their implied one
        impossible = f"{v.system}|{v.code or ''}"  # never stored for these params: matches nothing
        if v.system is None:
            return v.code
        if v.system == "":
            return impossible if param.implicit_systems else v.code
        if v.system in param.implicit_systems:
            return v.code if v.code is not None else ""  # "" marks "any code of the implied system"
        return impossible
    return token_entry_plain(v)


def of_type_entry(type_system: str, type_code: str, value: str) -> str:
    return f"{nz.esc(type_system)}|{nz.esc(type_code)}|{nz.esc(value)}"


def _token(param: SearchParam, clause: Clause) -> dict:
    field = "_id" if param.code == "_id" else param.f(TOKEN)
    mod = clause.modifier
    if mod == "text":
        return _or([{param.f(TOKEN_TEXT): {"$regex": "^" + re.escape(nz.fold(v.text))}} for v in clause.values])
    if mod == "of-type":
        entries = [of_type_entry(v.type_system, v.type_code, v.value) for v in clause.values]
        return _eq_or_in(param.f(TOKEN_OF_TYPE), entries)
    found = [token_entry(param, v) for v in clause.values]
    any_code = "" in found  # `implied-system|`: every value has it
    entries = [e for e in found if e]
    if mod == "not":
        if any_code:
            return {field: {"$exists": False}}
        return {field: {"$nin": entries}} if len(entries) > 1 else {field: {"$ne": entries[0]}}
    conds = []
    if any_code:
        conds.append({field: {"$exists": True}})
    if entries:
        conds.append(_eq_or_in(field, entries))
    return _or(conds) if conds else NOTHING


# --- strings -------------------------------------------------------------------------------------

def _string(param: SearchParam, clause: Clause) -> dict:
    mod = clause.modifier
    if mod == "exact":
        return _eq_or_in(param.f(STRING_EXACT), [nz.exact(v.text) for v in clause.values])
    if mod != "contains" and prefix.prefixed(param):  # an indexed equality (search/prefix.py)
        return prefix.condition(param, [v.text for v in clause.values])
    field = param.f(STRING)
    anchor = "" if mod == "contains" else "^"
    # :contains, and parameters without prefix tokens: a regex, which FerretDB applies in a scan
    return _or([{field: {"$regex": anchor + re.escape(nz.fold(v.text))}} for v in clause.values])


# --- references ----------------------------------------------------------------------------------

def reference_candidates(param: SearchParam, v: ReferenceValue, base_url: str | None) -> list[str] | str:
    """Stored keys a reference search value can match; a regex string when the type is open."""
    if v.url is not None:
        key = nz.reference_key(v.url, base_url)
        return [key] if key else []
    if v.type:
        return [f"{v.type}/{v.id}"]
    targets = param.targets
    if targets and len(targets) <= MAX_REFERENCE_EXPANSION:
        return [f"{t}/{v.id}" for t in targets]
    assert v.id is not None, "a reference value without a URL has an id"
    return "^[A-Z][A-Za-z]+/" + re.escape(v.id) + "$"


def _reference(param: SearchParam, clause: Clause, base_url: str | None) -> dict:
    if clause.modifier == "identifier":
        entries = [e for e in (token_entry_plain(v) for v in clause.values) if e]
        return _eq_or_in(param.f(REFERENCE_IDENTIFIER), entries) if entries else NOTHING
    field = param.f(REFERENCE)
    keys: list[str] = []
    conds: list[dict] = []
    for v in clause.values:
        cands = reference_candidates(param, v, base_url)
        if isinstance(cands, str):
            conds.append({field: {"$regex": cands}})
        else:
            keys.extend(cands)
    if keys:
        conds.insert(0, _eq_or_in(field, keys))
    return _or(conds) if conds else NOTHING


def token_entry_plain(v: TokenValue) -> str | None:
    """Entry for a coded value (Coding, Identifier...): see normalize.token_entries."""
    if v.code is None and v.system is None:
        return None
    if v.system is None:
        assert v.code is not None  # both None returned above
        return nz.esc(v.code)
    return f"{nz.esc(v.system)}|{nz.esc(v.code) if v.code is not None else ''}"


# --- dates ---------------------------------------------------------------------------------------

def _approx_delta(v: DateValue, now: datetime) -> timedelta:
    return abs(now - v.lo) / 10


def date_element_condition(v: DateValue, now: datetime, lo: str = "lo", hi: str = "hi") -> dict:
    """Condition on one stored {lo, hi} range for one search value (table in the module docstring)."""
    sl, sh = v.lo, v.hi
    p = v.prefix
    if p == "eq":
        return {lo: {"$gte": sl}, hi: {"$lte": sh}}
    if p == "ne":
        return {"$or": [{lo: {"$lt": sl}}, {hi: {"$gt": sh}}]}
    if p == "gt":
        return {hi: {"$gt": sh}}
    if p == "lt":
        return {lo: {"$lt": sl}}
    if p == "ge":
        return {"$or": [{hi: {"$gt": sh}}, {lo: {"$gte": sl}, hi: {"$lte": sh}}]}
    if p == "le":
        return {"$or": [{lo: {"$lt": sl}}, {lo: {"$gte": sl}, hi: {"$lte": sh}}]}
    if p == "sa":
        return {lo: {"$gte": sh}}
    if p == "eb":
        return {hi: {"$lte": sl}}
    if p == "ap":
        d = _approx_delta(v, now)
        return {lo: {"$lt": _add(sh, d)}, hi: {"$gt": _add(sl, -d)}}
    raise SearchError(f"Unknown prefix {p}")  # pragma: no cover - parse validates prefixes


def _add(t: datetime, d: timedelta) -> datetime:
    try:
        return t + d
    except OverflowError:
        return nz.MAX_INSTANT if d > timedelta(0) else nz.MIN_INSTANT


def point_condition(field: str, v: DateValue, now: datetime) -> dict:
    """The same table for a millisecond instant t stored alone (`_lu`): its range is [t, t+1ms)."""
    sl, sh = v.lo, v.hi
    p = v.prefix
    if p == "eq":
        return {field: {"$gte": sl, "$lt": sh}}
    if p == "ne":
        return {"$or": [{field: {"$lt": sl}}, {field: {"$gte": sh}}]}
    if p in ("gt", "sa"):
        return {field: {"$gte": sh}}
    if p in ("lt", "eb"):
        return {field: {"$lt": sl}}
    if p == "ge":
        return {field: {"$gte": sl}}
    if p == "le":
        return {field: {"$lt": sh}}
    if p == "ap":
        d = _approx_delta(v, now)
        # [t, t+1ms) overlaps [sl-d, sh+d)  <=>  t > sl-d-1ms and t < sh+d
        return {field: {"$gt": _add(_add(sl, -d), -timedelta(milliseconds=1)), "$lt": _add(sh, d)}}
    raise SearchError(f"Unknown prefix {p}")  # pragma: no cover


def _prefix_keys(cond: dict, prefix: str) -> dict:
    out = {}
    for k, v in cond.items():
        if k in ("$or", "$and"):
            out[k] = [_prefix_keys(c, prefix) for c in v]
        else:
            out[f"{prefix}.{k}"] = v
    return out


def _date(param: SearchParam, clause: Clause, now: datetime) -> dict:
    if param.code == "_lastUpdated":
        return _or([point_condition("_lu", v, now) for v in clause.values])
    field = param.f(DATE)
    conds = []
    for v in clause.values:
        elem = date_element_condition(v, now)
        if param.multiple:
            conds.append({field: {"$elemMatch": elem}})
        else:
            conds.append(_prefix_keys(elem, field))
    return _or(conds)


# --- numbers and quantities ----------------------------------------------------------------------

def number_ops(v: Union[NumberValue, QuantityValue]) -> list[dict]:
    """Operator documents on a stored number; the resource matches if any one matches (OR)."""
    value, lo, hi = float(v.value), float(v.lo), float(v.hi)
    p = v.prefix
    if p == "eq":
        return [{"$gte": lo, "$lt": hi}]
    if p == "ne":
        return [{"$lt": lo}, {"$gte": hi}]
    if p in ("gt", "sa"):
        return [{"$gt": value}]
    if p in ("lt", "eb"):
        return [{"$lt": value}]
    if p == "ge":
        return [{"$gte": value}]
    if p == "le":
        return [{"$lte": value}]
    if p == "ap":
        d = abs(float(v.value)) / 10
        return [{"$gte": value - d, "$lte": value + d}]
    raise SearchError(f"Unknown prefix {p}")  # pragma: no cover


def _number(param: SearchParam, clause: Clause) -> dict:
    field = param.f(NUMBER)
    conds = []
    for v in clause.values:
        for ops in number_ops(v):
            conds.append({field: {"$elemMatch": ops}} if param.multiple and len(ops) > 1 else {field: ops})
    return _or(conds)


def _quantity(param: SearchParam, clause: Clause) -> dict:
    field = param.f(QUANTITY)
    conds = []
    for v in clause.values:
        for ops in number_ops(v):
            elem: dict[str, Any] = {"v": ops}
            if v.system:
                elem["s"] = v.system
            if v.code:
                if v.system:
                    elem["c"] = v.code
                else:
                    elem = {"$and": [elem, {"$or": [{"c": v.code}, {"u": v.code}]}]}
            conds.append({field: {"$elemMatch": elem}} if param.multiple else _prefix_keys(elem, field))
    return _or(conds)


# --- uri, composite ------------------------------------------------------------------------------

def uri_prefixes(uri: str) -> list[str]:
    """`:above` targets: the uri itself and every parent path of it."""
    out = [uri]
    head = uri
    while "/" in head.rstrip("/"):
        head = head.rstrip("/").rsplit("/", 1)[0]
        if head.endswith(":") or head.endswith(":/"):
            break
        out.append(head)
    return out


def _uri(param: SearchParam, clause: Clause) -> dict:
    field = param.f(URI)
    if clause.modifier == "below":
        return _or([{field: {"$regex": "^" + re.escape(v.text)}} for v in clause.values])
    if clause.modifier == "above":
        return _eq_or_in(field, [p for v in clause.values for p in uri_prefixes(v.text)])
    return _eq_or_in(field, [v.text for v in clause.values])


def composite_entries(param: SearchParam, v: CompositeValue, base_url: str | None) -> list[str]:
    combos = [""]
    for i, (comp, part) in enumerate(zip(param.components, v.parts, strict=True)):
        if isinstance(part, TokenValue):
            implied = frozenset(p.code_system for p in comp.paths or () if p.code_system)
            sub = SearchParam(code=comp.code, type="token", base=param.base, expression=comp.expression,
                              paths=comp.paths, implicit_systems=implied)
            entry = token_entry(sub, part)
            options = [(nz.esc(entry) if sub.bare_tokens else entry)] if entry else []
        elif isinstance(part, ReferenceValue):
            sub = SearchParam(code=comp.code, type="reference", base=param.base, expression=comp.expression)
            cands = reference_candidates(sub, part, base_url)
            options = [nz.esc(c) for c in cands] if isinstance(cands, list) else []
        elif isinstance(part, StringValue):
            options = [nz.esc(nz.fold(part.text))]
        elif isinstance(part, UriValue):
            options = [nz.esc(part.text)]
        else:  # pragma: no cover - parse rejects other component types
            options = []
        combos = [(c + "$" if i else "") + o for c in combos for o in options]
    return combos


def _composite(param: SearchParam, clause: Clause, base_url: str | None) -> dict:
    entries = [e for v in clause.values for e in composite_entries(param, v, base_url)]
    return _eq_or_in(param.f(COMPOSITE), entries) if entries else NOTHING


# --- clauses and queries -------------------------------------------------------------------------

def compile_clause(
    clause: Union[Clause, HasClause],
    resolved_chains: dict[str, list[str]] | None = None,
    *,
    base_url: str | None = None,
    now: datetime | None = None,
    resource_type: str | None = None,
) -> dict:
    """Filter for one clause. Chains/_has must be in `resolved_chains` under `clause.key`."""
    resolved_chains = resolved_chains or {}
    if isinstance(clause, HasClause):
        if clause.key not in resolved_chains:
            raise KeyError(f"unresolved _has clause {clause.key}")
        rtype = resource_type or ""
        ids = [r.split("/", 1)[1] for r in resolved_chains[clause.key] if r.startswith(rtype + "/")]
        return {"_id": {"$in": list(dict.fromkeys(ids))}}
    param = clause.param
    if clause.chain is not None:
        if clause.key not in resolved_chains:
            raise KeyError(f"unresolved chain {clause.key}")
        return {param.f(REFERENCE): {"$in": list(dict.fromkeys(resolved_chains[clause.key]))}}
    if clause.missing is not None:
        return missing_condition(param, clause.missing)
    now = now or datetime.now(timezone.utc)
    ptype = param.type
    if ptype == "token":
        return _token(param, clause)
    if ptype == "string":
        return _string(param, clause)
    if ptype == "reference":
        return _reference(param, clause, base_url)
    if ptype == "date":
        return _date(param, clause, now)
    if ptype == "number":
        return _number(param, clause)
    if ptype == "quantity":
        return _quantity(param, clause)
    if ptype == "uri":
        return _uri(param, clause)
    if ptype == "composite":
        return _composite(param, clause, base_url)
    raise SearchError(f"Parameters of type {ptype} are not supported", clause.name)


def missing_condition(param: SearchParam, missing: bool) -> dict:
    """:missing (https://hl7.org/fhir/R4/search.html#missing) over every field that can carry a value:
    a CodeableConcept with only text, or a Reference with only an identifier, is still a value."""
    fields = [param.field]
    if param.type == "token" and param.code != "_id" and not param.bare_tokens:
        fields.append(param.f(TOKEN_TEXT))
    elif param.type == "reference":
        fields.append(param.f(REFERENCE_IDENTIFIER))
    if len(fields) == 1:
        return {fields[0]: {"$exists": not missing}}
    if missing:
        return {"$and": [{f: {"$exists": False}} for f in fields]}
    return {"$or": [{f: {"$exists": True}} for f in fields]}


def merge(conditions: list[dict], extra: dict | None = None) -> dict:
    """AND conditions, keeping single-field ones as top-level keys (FerretDB pushdown, see above)."""
    out: dict = dict(extra or {})
    rest: list[dict] = []
    for cond in conditions:
        if len(cond) == 1:
            (k, v), = cond.items()
            if k not in out and k != "$and":
                out[k] = v
                continue
            if k == "$and":
                rest.extend(v)
                continue
        rest.append(cond)
    if rest:
        out["$and"] = out.get("$and", []) + rest
    return out


def compile(
    query: SearchQuery,
    resolved_chains: dict[str, list[str]] | None = None,
    *,
    base_url: str | None = None,
    now: datetime | None = None,
    extra: dict | None = None,
) -> dict:
    """The MongoDB filter for `query`'s criteria (result parameters are not part of it).

    `resolved_chains` maps each chain/_has clause's `key` to the "Type/id" references it resolved to
    (see `resolve`). `extra` is merged at top level (e.g. `{"_del": False}`), `now` anchors `ap`.
    """
    now = now or datetime.now(timezone.utc)
    conds = [
        compile_clause(c, resolved_chains, base_url=base_url, now=now, resource_type=query.resource_type)
        for c in query.clauses
    ]
    return merge(conds, extra)


def sort_spec(query: SearchQuery) -> list[tuple[str, int]]:
    """pymongo sort keys for `_sort`, always ending with `_id` so that paging by cursor is stable.

    Dates sort by the start of their range in both directions (so the `.lo` indexes serve the sort);
    repeating values sort by their lowest (ascending) or highest (descending) entry, MongoDB's rule
    for arrays, which is the natural reading of https://hl7.org/fhir/R4/search.html#sort.
    """
    params = params_for(query.resource_type)
    out: list[tuple[str, int]] = []
    for code, desc in query.sort:
        param = params[code]
        direction = -1 if desc else 1
        if code == "_id":
            field = "_id"
        elif code == "_lastUpdated":
            field = "_lu"
        elif param.type == "date":
            field = param.f(DATE) + ".lo"
        elif param.type == "quantity":
            field = param.f(QUANTITY) + ".v"
        else:
            field = param.field
        if all(f != field for f, _ in out):
            out.append((field, direction))
    if all(f != "_id" for f, _ in out):
        out.append(("_id", 1))
    return out


# --- chain resolution ----------------------------------------------------------------------------

Finder = Callable[[str, dict, str], Awaitable[list]]


async def resolve(
    query: SearchQuery,
    find: Finder,
    *,
    base_url: str | None = None,
    now: datetime | None = None,
    extra: dict | None = None,
) -> dict[str, list[str]]:
    """Resolve the chains and `_has` clauses of `query` to "Type/id" lists, for `compile`.

    `find(resource_type, filter, field)` must return the values of `field` ("_id" or an index field,
    arrays flattened) over the current, non-deleted documents of `resource_type` matching `filter`;
    `extra` is merged into every inner filter (e.g. the tombstone condition).
    """
    resolved: dict[str, list[str]] = {}
    for clause in query.needs_resolution():
        if clause.key in resolved:
            continue
        if isinstance(clause, HasClause):
            inner = SearchQuery(clause.source_type, [clause.inner])
            inner_resolved = await resolve(inner, find, base_url=base_url, now=now, extra=extra)
            flt = compile(inner, inner_resolved, base_url=base_url, now=now, extra=extra)
            values = await find(clause.source_type, flt, clause.ref_param.f(REFERENCE))
            resolved[clause.key] = [v for v in values if isinstance(v, str)]
            continue
        chain = clause.chain
        assert chain is not None, "needs_resolution() returns _has clauses and chains only"
        refs: list[str] = []
        for target, inner_clause in chain.clauses.items():
            inner = SearchQuery(target, [inner_clause])
            inner_resolved = await resolve(inner, find, base_url=base_url, now=now, extra=extra)
            flt = compile(inner, inner_resolved, base_url=base_url, now=now, extra=extra)
            refs.extend(f"{target}/{i}" for i in await find(target, flt, "_id"))
        resolved[clause.key] = refs
    return resolved
