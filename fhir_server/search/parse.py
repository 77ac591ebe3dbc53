"""Parse one FHIR search request into an abstract query (https://hl7.org/fhir/R4/search.html).

The parser knows the parameter definitions (registry.py) but nothing of the database: it turns
`(name, value)` pairs, exactly as they came from a query string or a form body (already URL-decoded),
into typed clauses that mongo.compile turns into a filter and that tests/search_oracle.py evaluates in
plain Python. Keeping the two consumers apart is what lets the oracle check the compiler.

Spec rules applied here:
* repeating a parameter is AND, commas inside one value are OR, `\\,` `\\|` `\\$` `\\\\` escape
  (https://hl7.org/fhir/R4/search.html#combining, #escaping);
* prefixes `eq ne gt lt ge le sa eb ap` on date/number/quantity (#prefix);
* an unsupported modifier is an error: "Servers SHALL reject any search request that contains a search
  parameter with an unsupported modifier" (#modifiers) -> SearchError;
* unknown parameters are not errors here: they are collected in `unknown`, and the caller ignores them
  or fails under `Prefer: handling=strict` (#errors);
* chains (`subject:Patient.name=x`, #chaining) and reverse chains (`_has:...`, #has) are parsed
  structurally; resolving them needs the database (mongo.resolve).
The query renders itself back to a canonical query string for the Bundle's self/next links, which
SHALL show the parameters actually used (#selflink).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Union
from urllib.parse import quote

from . import normalize as nz
from .registry import SearchParam, known_resource_types, params_for

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
SUMMARY_VALUES = ("true", "text", "data", "count", "false")
TOTAL_VALUES = ("none", "estimate", "accurate")
# Framework parameters that are not search criteria: never unknown, never rendered into links.
CONTROL_PARAMS = ("_format", "_pretty")
# Modifiers the spec defines but that need a terminology server or hierarchy support we lack.
UNSUPPORTED = {"token": ("above", "below", "in", "not-in"), "reference": ("above", "below")}


class SearchError(Exception):
    """A search the server must reject (HTTP 400 + OperationOutcome; `expression` names the parameter)."""

    def __init__(self, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression


# --- values --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StringValue:
    text: str


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # None: not given ("code"); "": explicitly none ("|code")
    code: str | None  # None: any code of the system ("system|")


@dataclass(frozen=True, slots=True)
class OfTypeValue:
    type_system: str
    type_code: str
    value: str


@dataclass(frozen=True, slots=True)
class DateValue:
    prefix: str
    text: str
    lo: datetime
    hi: datetime


@dataclass(frozen=True, slots=True)
class NumberValue:
    prefix: str
    text: str
    value: Decimal
    lo: Decimal
    hi: Decimal


@dataclass(frozen=True, slots=True)
class QuantityValue:
    prefix: str
    text: str
    value: Decimal
    lo: Decimal
    hi: Decimal
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    type: str | None
    id: str | None
    url: str | None  # absolute URL or other non `Type/id` reference text


@dataclass(frozen=True, slots=True)
class UriValue:
    text: str


@dataclass(frozen=True, slots=True)
class CompositeValue:
    parts: tuple


Value = Union[StringValue, TokenValue, OfTypeValue, DateValue, NumberValue, QuantityValue, ReferenceValue,
              UriValue, CompositeValue]


# --- clauses -------------------------------------------------------------------------------------

@dataclass(slots=True)
class Clause:
    """One `name[:modifier]=v1,v2` pair: its values are ORed; clauses of a query are ANDed."""

    name: str  # parameter code
    param: SearchParam
    modifier: str | None
    values: tuple = ()  # OR alternatives (Value instances)
    raw: tuple[str, ...] = ()  # the alternatives as given (escaped), for rendering
    missing: bool | None = None  # set for :missing
    chain: Chain | None = None

    @property
    def key(self) -> str:
        """Canonical `name=value` text: identifies a chain for resolved_chains and renders links."""
        return f"{quote(self.render_name(), safe=_NAME_SAFE)}={_quote_value(self.render_value())}"

    def render_name(self) -> str:
        name = self.name + (f":{self.modifier}" if self.modifier else "")
        if self.chain is not None:
            name += "." + self.chain.render_name()
        return name

    def render_value(self) -> str:
        if self.chain is not None:
            return self.chain.render_value()
        if self.missing is not None:
            return "true" if self.missing else "false"
        return ",".join(self.raw)


@dataclass(slots=True)
class Chain:
    """`ref[:Type].inner...`: the inner clause, parsed once per candidate target type."""

    clauses: dict[str, Union[Clause, HasClause]]  # target type -> inner clause on that type

    def render_name(self) -> str:
        return next(iter(self.clauses.values())).render_name()

    def render_value(self) -> str:
        return next(iter(self.clauses.values())).render_value()


@dataclass(slots=True)
class HasClause:
    """`_has:Source:refparam:inner=value`: our resources that Source resources matching inner refer to."""

    source_type: str
    ref_param: SearchParam
    inner: Union[Clause, HasClause]

    @property
    def name(self) -> str:
        return "_has"

    @property
    def key(self) -> str:
        return f"{quote(self.render_name(), safe=_NAME_SAFE)}={_quote_value(self.render_value())}"

    def render_name(self) -> str:
        return f"_has:{self.source_type}:{self.ref_param.code}:{self.inner.render_name()}"

    def render_value(self) -> str:
        return self.inner.render_value()


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str  # "*" for `_include=*`
    param: str  # parameter code or "*"
    target_type: str | None = None
    iterate: bool = False

    def render(self) -> str:
        if self.source_type == "*":
            return "*"
        return ":".join(x for x in (self.source_type, self.param, self.target_type) if x)


@dataclass(slots=True)
class SearchQuery:
    resource_type: str
    clauses: list[Union[Clause, HasClause]] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (code, descending)
    count: int | None = None
    total: str | None = None
    summary: str | None = None
    elements: list[str] | None = None
    include: list[Include] = field(default_factory=list)
    revinclude: list[Include] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)  # ignored unless handling=strict
    control: dict[str, str] = field(default_factory=dict)  # _format, _pretty

    def needs_resolution(self) -> list[Union[Clause, HasClause]]:
        """Clauses that the database must resolve before compiling (chains and _has)."""
        return [c for c in self.clauses if isinstance(c, HasClause) or c.chain is not None]

    def to_query_string(self, *, include_count: bool = True) -> str:
        """Canonical query string of what was applied: unknown/ignored params are left out."""
        parts = [c.key for c in self.clauses]
        if self.sort:
            parts.append("_sort=" + _quote_value(",".join(("-" if d else "") + c for c, d in self.sort)))
        if self.count is not None and include_count:
            parts.append(f"_count={self.count}")
        if self.total:
            parts.append(f"_total={self.total}")
        if self.summary:
            parts.append(f"_summary={self.summary}")
        if self.elements:
            parts.append("_elements=" + _quote_value(",".join(self.elements)))
        for name, incs in (("_include", self.include), ("_revinclude", self.revinclude)):
            for inc in incs:
                parts.append(f"{name}{':iterate' if inc.iterate else ''}={_quote_value(inc.render())}")
        return "&".join(parts)


_NAME_SAFE = ":._-"
_VALUE_SAFE = ":/|,$*._-~"


def _quote_value(text: str) -> str:
    return quote(text, safe=_VALUE_SAFE)


# --- escaping ------------------------------------------------------------------------------------

def split_escaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on `sep` not preceded by a backslash; the parts keep their escapes."""
    parts, cur, i, n = [], [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep and maxsplit != 0:
            parts.append("".join(cur))
            cur = []
            maxsplit -= 1
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


# --- value parsing -------------------------------------------------------------------------------

def _split_prefix(text: str, param: SearchParam, expr: str) -> tuple[str, str, bool]:
    if len(text) >= 2 and text[:2].isalpha():
        prefix = text[:2]
        if prefix not in PREFIXES:
            raise SearchError(f"Unknown prefix {prefix!r} in {text!r}", expr)
        if param.comparators and prefix not in param.comparators and prefix != "eq":
            raise SearchError(f"Prefix {prefix!r} is not supported by parameter {param.code}", expr)
        return prefix, text[2:], True
    return "eq", text, False


def _date_value(alt: str, param: SearchParam, expr: str) -> DateValue:
    prefix, text, _ = _split_prefix(unescape(alt), param, expr)
    try:
        lo, hi = nz.date_range(text)
    except ValueError:
        raise SearchError(f"Invalid date {text!r} for parameter {param.code}", expr) from None
    return DateValue(prefix, text, lo, hi)


def _number_value(alt: str, param: SearchParam, expr: str) -> NumberValue:
    prefix, text, _ = _split_prefix(unescape(alt), param, expr)
    try:
        value, lo, hi = nz.number_range(text)
    except ValueError:
        raise SearchError(f"Invalid number {text!r} for parameter {param.code}", expr) from None
    return NumberValue(prefix, text, value, lo, hi)


def _quantity_value(alt: str, param: SearchParam, expr: str) -> QuantityValue:
    pieces = split_escaped(alt, "|")
    if len(pieces) not in (1, 3):
        raise SearchError(f"Invalid quantity {alt!r}: expected number|system|code", expr)
    num = _number_value(pieces[0], param, expr)
    system = unescape(pieces[1]) if len(pieces) == 3 and pieces[1] else None
    code = unescape(pieces[2]) if len(pieces) == 3 and pieces[2] else None
    return QuantityValue(num.prefix, num.text, num.value, num.lo, num.hi, system, code)


def token_value(alt: str) -> TokenValue:
    pieces = split_escaped(alt, "|", 1)
    if len(pieces) == 1:
        return TokenValue(None, unescape(pieces[0]))
    system, code = unescape(pieces[0]), unescape(pieces[1])
    return TokenValue(system, code or None)


def _reference_value(alt: str, param: SearchParam, type_modifier: str | None, expr: str) -> ReferenceValue:
    text = unescape(alt)
    if re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", text):
        return ReferenceValue(type_modifier, text, None)
    m = re.fullmatch(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?", text)
    if m:
        if type_modifier and m.group(1) != type_modifier:
            raise SearchError(f"Reference {text!r} contradicts modifier :{type_modifier}", expr)
        return ReferenceValue(m.group(1), m.group(2), None)
    if type_modifier:
        raise SearchError(f"Invalid id {text!r} for :{type_modifier}", expr)
    return ReferenceValue(None, None, text)


def _is_identifier_param(param: SearchParam) -> bool:
    return param.paths is None or any("Identifier" in p.types for p in param.paths)


def _values(param: SearchParam, modifier: str | None, alts: list[str], expr: str) -> tuple:
    ptype = param.type
    out: list[Value] = []
    for alt in alts:
        if ptype == "string":
            out.append(StringValue(unescape(alt)))
        elif ptype == "token":
            if modifier == "text":
                out.append(StringValue(unescape(alt)))
            elif modifier == "of-type":
                pieces = split_escaped(alt, "|")
                if len(pieces) != 3 or not all(pieces):
                    raise SearchError(f"Invalid :of-type value {alt!r}: expected system|code|value", expr)
                out.append(OfTypeValue(*(unescape(p) for p in pieces)))
            else:
                out.append(token_value(alt))
        elif ptype == "reference":
            if modifier == "identifier":
                out.append(token_value(alt))
            else:
                out.append(_reference_value(alt, param, modifier, expr))
        elif ptype == "date":
            out.append(_date_value(alt, param, expr))
        elif ptype == "number":
            out.append(_number_value(alt, param, expr))
        elif ptype == "quantity":
            out.append(_quantity_value(alt, param, expr))
        elif ptype == "uri":
            out.append(UriValue(unescape(alt)))
        elif ptype == "composite":
            pieces = split_escaped(alt, "$")
            if len(pieces) != len(param.components):
                raise SearchError(
                    f"Composite parameter {param.code} expects {len(param.components)} values joined by '$'", expr
                )
            parts: list[Value] = []
            for comp, piece in zip(param.components, pieces, strict=True):
                if comp.type not in ("token", "reference", "string", "uri"):
                    raise SearchError(f"Composite component of type {comp.type} is not supported", expr)
                sub = SearchParam(code=comp.code, type=comp.type, base=param.base, expression=comp.expression)
                parts.append(_values(sub, None, [piece], expr)[0])
            out.append(CompositeValue(tuple(parts)))
        else:
            raise SearchError(f"Parameters of type {ptype} are not supported", expr)
    return tuple(out)


def _check_modifier(param: SearchParam, modifier: str | None, expr: str) -> None:
    if modifier is None:
        return
    ptype = param.type
    if modifier == "missing":
        if ptype == "composite":
            raise SearchError(f"Modifier :missing is not allowed on composite parameter {param.code}", expr)
        return
    if ptype == "reference" and modifier not in ("identifier", "above", "below"):
        if modifier not in known_resource_types():
            raise SearchError(f"Unknown modifier or resource type :{modifier} on {param.code}", expr)
        if param.targets and modifier not in param.targets:
            raise SearchError(f"{modifier} is not a target type of parameter {param.code}", expr)
        return
    if modifier in UNSUPPORTED.get(ptype, ()):
        raise SearchError(f"Modifier :{modifier} is not supported on parameter {param.code}", expr)
    if modifier not in param.modifiers:
        raise SearchError(f"Modifier :{modifier} is not allowed on {ptype} parameter {param.code}", expr)
    if modifier == "of-type" and not _is_identifier_param(param):
        raise SearchError(f"Modifier :of-type only applies to identifiers, not {param.code}", expr)


# --- clause parsing ------------------------------------------------------------------------------

class _Unknown(Exception):
    """The parameter (or a chained/reverse-chained part of it) is not known: collect, don't fail."""


def _parse_clause(rtype: str, name: str, value: str, expr: str, depth: int = 0) -> Union[Clause, HasClause, None]:
    if depth > 4:
        raise SearchError("Chains deeper than 4 levels are not supported", expr)
    if name.startswith("_has:"):
        return _parse_has(rtype, name, value, expr, depth)
    head, dot, rest = name.partition(".")
    code, colon, modifier = head.partition(":")
    params = params_for(rtype)
    param = params.get(code)
    if param is None:
        raise _Unknown
    mod = modifier if colon else None
    if colon and not modifier:
        raise SearchError(f"Empty modifier in {name!r}", expr)
    if dot:
        if param.type != "reference":
            raise SearchError(f"Parameter {code} is not a reference and cannot be chained", expr)
        if mod is not None and mod in ("identifier", "missing", "above", "below"):
            raise SearchError(f"Modifier :{mod} cannot be chained", expr)
        _check_modifier(param, mod, expr)
        candidates = [mod] if mod else list(param.targets or ())
        inner: dict[str, Union[Clause, HasClause]] = {}
        for target in candidates:
            if not params_for(target):
                continue
            try:
                clause = _parse_clause(target, rest, value, expr, depth + 1)
            except _Unknown:
                continue
            if clause is not None:
                inner[target] = clause
        if not inner:
            raise _Unknown
        return Clause(code, param, mod, chain=Chain(inner))
    _check_modifier(param, mod, expr)
    if mod == "missing":
        if value not in ("true", "false"):
            raise SearchError(f":missing takes true or false, not {value!r}", expr)
        return Clause(code, param, mod, missing=value == "true")
    if param.type == "composite" and mod:
        raise SearchError(f"Modifiers are not allowed on composite parameter {code}", expr)
    alts = [a for a in split_escaped(value, ",") if a != ""]
    if param.type == "date":  # an unencoded '+' of a time zone arrives as a space: repair it
        alts = [re.sub(r" (\d{2}:\d{2})$", r"+\1", a) for a in alts]
    if not alts:
        return None  # an empty value filters nothing: ignore it like an absent parameter
    values = _values(param, mod, alts, expr)
    return Clause(code, param, mod, values, tuple(alts))


def _parse_has(rtype: str, name: str, value: str, expr: str, depth: int) -> HasClause | None:
    pieces = name.split(":", 3)
    if len(pieces) < 4 or not all(pieces[1:]):
        raise SearchError(f"Malformed _has parameter {name!r}: expected _has:Type:reference:parameter", expr)
    _, source, ref_code, rest = pieces
    ref_param = params_for(source).get(ref_code)
    if ref_param is None:
        raise _Unknown
    if ref_param.type != "reference":
        raise SearchError(f"{source}.{ref_code} is not a reference parameter", expr)
    if ref_param.targets and rtype not in ref_param.targets:
        raise SearchError(f"{source}.{ref_code} cannot refer to {rtype}", expr)
    inner = _parse_clause(source, rest, value, expr, depth + 1)
    if inner is None:
        return None
    return HasClause(source, ref_param, inner)


def _parse_include(rtype: str, name: str, value: str, query: SearchQuery, reverse: bool) -> None:
    base, _, mod = name.partition(":")
    if mod and mod not in ("iterate", "recurse"):
        raise SearchError(f"Unknown modifier :{mod} on {base}", name)
    iterate = bool(mod)
    if value == "*" and not reverse:
        query.include.append(Include("*", "*", None, iterate))
        return
    pieces = value.split(":")
    if len(pieces) not in (2, 3) or not all(pieces):
        raise SearchError(f"Malformed {base} value {value!r}: expected Type:parameter[:targetType]", name)
    source, code = pieces[0], pieces[1]
    target = pieces[2] if len(pieces) == 3 else None
    if code == "*":
        if not params_for(source):
            query.unknown.append((name, value))
            return
        (query.revinclude if reverse else query.include).append(Include(source, "*", target, iterate))
        return
    param = params_for(source).get(code)
    if param is None:
        query.unknown.append((name, value))
        return
    if param.type != "reference":
        raise SearchError(f"{source}:{code} is not a reference parameter", name)
    if target and param.targets and target not in param.targets:
        raise SearchError(f"{target} is not a target type of {source}:{code}", name)
    if not reverse and not iterate and source != rtype:
        raise SearchError(f"_include source type {source} is not the searched type {rtype}", name)
    (query.revinclude if reverse else query.include).append(Include(source, code, target, iterate))


def _parse_sort(rtype: str, value: str) -> list[tuple[str, bool]]:
    params = params_for(rtype)
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        desc = item.startswith("-")
        code = item[1:] if desc else item
        param = params.get(code)
        if param is None or param.type == "composite":
            raise SearchError(f"Cannot sort {rtype} by {code!r}", "_sort")
        out.append((code, desc))
    return out


def parse(rtype: str, pairs: list[tuple[str, str]]) -> SearchQuery:
    """Parse the search parameters of a `rtype` search.

    Raises SearchError for what the spec says to reject (unsupported modifiers, malformed values,
    invalid result parameters); unknown parameters are returned in `query.unknown` instead.
    """
    if not params_for(rtype):
        raise SearchError(f"Resource type {rtype} is not supported for search")
    query = SearchQuery(rtype)
    for name, value in pairs:
        base = name.split(":", 1)[0]
        if name in CONTROL_PARAMS:
            query.control[name] = value
        elif base == "_sort":
            query.sort = _parse_sort(rtype, value)
        elif name == "_count":
            if not re.fullmatch(r"\d{1,9}", value):
                raise SearchError(f"_count must be a non-negative integer, not {value!r}", "_count")
            query.count = int(value)
        elif name == "_total":
            if value not in TOTAL_VALUES:
                raise SearchError(f"_total must be one of {', '.join(TOTAL_VALUES)}", "_total")
            query.total = value
        elif name == "_summary":
            if value not in SUMMARY_VALUES:
                raise SearchError(f"_summary must be one of {', '.join(SUMMARY_VALUES)}", "_summary")
            query.summary = value
        elif name == "_elements":
            elements = [e.strip() for e in value.split(",") if e.strip()]
            if not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*(\[x\])?", e) for e in elements):
                raise SearchError(f"Invalid _elements value {value!r}", "_elements")
            query.elements = elements or None
        elif base == "_include":
            _parse_include(rtype, name, value, query, reverse=False)
        elif base == "_revinclude":
            _parse_include(rtype, name, value, query, reverse=True)
        else:
            try:
                clause = _parse_clause(rtype, name, value, name)
            except _Unknown:
                query.unknown.append((name, value))
                continue
            if clause is not None:
                query.clauses.append(clause)
    return query
