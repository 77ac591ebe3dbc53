"""Reference evaluator for FHIR search: does this resource match this parsed clause? No database.

Written apart from fhir_server/search/{extract,normalize,mongo}.py on purpose: values are pulled out
with a general FHIRPath engine (fhirpathpy) instead of the precompiled key walks, dates are parsed
with `datetime.fromisoformat`, and each rule is written the way https://hl7.org/fhir/R4/search.html
states it (ranges, overlaps, "contains"), not the way the MongoDB filter encodes it. Only the parsed
query (fhir_server.search.parse) and the configured default time zone are shared. Chains and `_has`
are evaluated by looking the referenced resources up in an in-memory `db` (type -> resources).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from fhirpathpy import compile as fp_compile
from fhirpathpy.models import models

from fhir_server.search import normalize as _nz  # only for DEFAULT_TZ, a configuration value
from fhir_server.search.parse import (
    Clause,
    DateValue,
    HasClause,
    ReferenceValue,
    SearchQuery,
    TokenValue,
)

UTC = timezone.utc
NEG_INF = datetime(1, 1, 1, tzinfo=UTC)
POS_INF = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


# --- extraction ----------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _compiled(expression: str, rtype: str):
    expr = re.sub(r"resolve\(\) is (\w+)", r"reference.startsWith('\1/')", expression)
    expr = re.sub(r"\bResource\.", f"{rtype}.", expr)
    return fp_compile(expr, model=models["r4"])


def values(resource: dict, expression: str) -> list:
    return [v for v in _compiled(expression, resource["resourceType"])(resource) if v is not None]


# --- strings -------------------------------------------------------------------------------------

def insensitive(text: str) -> str:
    """Case- and accent-insensitive form: decompose, drop marks (category M*), casefold, squeeze blanks."""
    chars = [c for c in unicodedata.normalize("NFKD", text) if not unicodedata.category(c).startswith("M")]
    return re.sub(r"\s+", " ", "".join(chars).casefold()).strip()


def string_parts(v) -> list[str]:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, dict):
        return []
    out: list[str] = []
    for key in ("family", "given", "prefix", "suffix", "text", "line", "city", "district", "state",
                "postalCode", "country"):
        x = v.get(key)
        out.extend([x] if isinstance(x, str) else [s for s in x or [] if isinstance(s, str)])
    return out


def match_string(strings: list[str], clause: Clause) -> bool:
    for sv in clause.values:
        for s in strings:
            if clause.modifier == "exact":
                if unicodedata.normalize("NFC", s) == unicodedata.normalize("NFC", sv.text):
                    return True
            elif clause.modifier == "contains":
                if insensitive(sv.text) in insensitive(s):
                    return True
            elif insensitive(s).startswith(insensitive(sv.text)):
                return True
    return False


# --- tokens --------------------------------------------------------------------------------------

def codings(v, implicit_system: str | None) -> list[tuple[str | None, str | None]]:
    """(system, code) pairs a value offers to token search (R4 search.html#token table)."""
    if isinstance(v, bool):
        return [(None, "true" if v else "false")]
    if isinstance(v, str):
        return [(implicit_system, v)]
    if not isinstance(v, dict):
        return []
    if "coding" in v or ("text" in v and "value" not in v and "code" not in v):
        return [(c.get("system"), c.get("code")) for c in v.get("coding", [])]
    if "value" in v:  # Identifier or ContactPoint
        return [(v.get("system"), v.get("value"))]
    return [(v.get("system"), v.get("code"))]


def texts(v) -> list[str]:
    if not isinstance(v, dict):
        return []
    out = [v.get("text")] + [c.get("display") for c in v.get("coding", [])]
    out += [c.get("display") for c in (v.get("type") or {}).get("coding", [])] + [(v.get("type") or {}).get("text")]
    if "display" in v and "coding" not in v:
        out.append(v["display"])
    return [t for t in out if isinstance(t, str)]


def token_matches(pairs, tv: TokenValue) -> bool:
    for system, code in pairs:
        if tv.code is not None and code != tv.code:
            continue
        if tv.code is None and code is None and system is None:
            continue
        if tv.system is None:
            if tv.code is not None:
                return True
        elif tv.system == "":
            if system is None:
                return True
        elif system == tv.system:
            return True
    return False


def match_token(vals: list, clause: Clause, implicit: str | None) -> bool:
    if clause.modifier == "text":
        return any(
            insensitive(t).startswith(insensitive(sv.text)) for v in vals for t in texts(v) for sv in clause.values
        )
    if clause.modifier == "of-type":
        for v in vals:
            if isinstance(v, dict):
                for c in (v.get("type") or {}).get("coding", []):
                    for ov in clause.values:
                        if (c.get("system"), c.get("code"), v.get("value")) == (ov.type_system, ov.type_code, ov.value):
                            return True
        return False
    pairs = [p for v in vals for p in codings(v, implicit)]
    hit = any(token_matches(pairs, tv) for tv in clause.values)
    return not hit if clause.modifier == "not" else hit


# --- references ----------------------------------------------------------------------------------

def ref_target(v) -> str | None:
    if not isinstance(v, dict) or not v.get("reference"):
        return None
    ref = v["reference"]
    if ref.startswith("#"):
        return None
    return re.sub(r"/_history/.*$", "", ref)


def match_reference(vals: list, clause: Clause, param) -> bool:
    if clause.modifier == "identifier":
        pairs = [(v["identifier"].get("system"), v["identifier"].get("value"))
                 for v in vals if isinstance(v, dict) and isinstance(v.get("identifier"), dict)]
        return any(token_matches(pairs, tv) for tv in clause.values)
    targets = [t for t in (ref_target(v) for v in vals) if t]
    for rv in clause.values:
        for t in targets:
            if rv.url is not None:
                if t == rv.url:
                    return True
                continue
            rtype, _, rid = t.rpartition("/")
            if rid != rv.id or "/" in rtype:
                continue
            if rv.type is not None:
                if rtype == rv.type:
                    return True
            elif not param.targets or rtype in param.targets:
                return True
    return False


# --- dates ---------------------------------------------------------------------------------------

def when(text: str) -> tuple[datetime, datetime]:
    """[low, high) of a FHIR date/dateTime/instant by its precision; zone-less values in the default zone."""
    zone = _nz.DEFAULT_TZ
    if re.fullmatch(r"\d{4}", text):
        lo = datetime(int(text), 1, 1, tzinfo=zone)
        hi = datetime(int(text) + 1, 1, 1, tzinfo=zone) if int(text) < 9999 else POS_INF
    elif re.fullmatch(r"\d{4}-\d{2}", text):
        y, m = map(int, text.split("-"))
        lo = datetime(y, m, 1, tzinfo=zone)
        hi = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=zone)
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        lo = datetime.fromisoformat(text).replace(tzinfo=zone)
        hi = lo + timedelta(days=1)
    else:
        m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(:\d{2})?(\.\d+)?(Z|[+-]\d{2}:\d{2})?", text)
        assert m, text
        lo = datetime.fromisoformat(m.group(1) + (m.group(2) or "") + (m.group(3) or ""))
        lo = lo.replace(tzinfo=zone) if m.group(4) is None else lo.replace(
            tzinfo=datetime.fromisoformat("2000-01-01T00:00:00" + m.group(4).replace("Z", "+00:00")).tzinfo)
        if m.group(3):
            step = timedelta(seconds=10 ** -(len(m.group(3)) - 1))
        elif m.group(2):
            step = timedelta(seconds=1)
        else:
            step = timedelta(minutes=1)
        hi = lo + step
    return lo.astimezone(UTC), hi.astimezone(UTC)


def target_ranges(vals: list) -> list[tuple[datetime, datetime]]:
    out = []
    for v in vals:
        if isinstance(v, str):
            out.append(when(v))
        elif isinstance(v, dict):
            out.append((when(v["start"])[0] if v.get("start") else NEG_INF,
                        when(v["end"])[1] if v.get("end") else POS_INF))
    return out


def overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def contains(outer: tuple, inner: tuple) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1]


def date_matches(target: tuple, dv: DateValue, now: datetime) -> bool:
    """The prefix table of R4 search.html#prefix, read literally."""
    search = (dv.lo, dv.hi)
    above = (dv.hi, datetime.max.replace(tzinfo=UTC))  # strictly beyond any stored bound
    below = (NEG_INF, dv.lo)
    p = dv.prefix
    if p == "eq":
        return contains(search, target)
    if p == "ne":
        return not contains(search, target)
    if p == "gt":
        return overlaps(above, target)
    if p == "lt":
        return overlaps(below, target)
    if p == "ge":
        return overlaps(above, target) or contains(search, target)
    if p == "le":
        return overlaps(below, target) or contains(search, target)
    if p == "sa":
        return not overlaps(search, target) and contains(above, target)
    if p == "eb":
        return not overlaps(search, target) and contains(below, target)
    if p == "ap":
        gap = abs(now - dv.lo) / 10
        return overlaps((dv.lo - gap, dv.hi + gap), target)
    raise AssertionError(p)


# --- clause / query ------------------------------------------------------------------------------

def match_clause(resource: dict, clause, db: dict[str, list[dict]] | None = None, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    db = db or {}
    if isinstance(clause, HasClause):
        me = f"{resource['resourceType']}/{resource['id']}"
        for other in db.get(clause.source_type, []):
            refs = [ref_target(v) for v in values(other, clause.ref_param.expression)]
            if me in refs and match_clause(other, clause.inner, db, now):
                return True
        return False
    param = clause.param
    if param.code == "_lastUpdated":
        lu = datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))
        vals_ranges = [(lu, lu + timedelta(milliseconds=1))]
        if clause.missing is not None:
            return not clause.missing
        return any(date_matches(vals_ranges[0], dv, now) for dv in clause.values)
    vals = values(resource, param.expression)
    if clause.chain is not None:
        for ref in (ref_target(v) for v in vals):
            if not ref or "/" not in ref:
                continue
            rtype, rid = ref.split("/", 1)
            inner = clause.chain.clauses.get(rtype)
            if inner is None:
                continue
            for other in db.get(rtype, []):
                if other["id"] == rid and match_clause(other, inner, db, now):
                    return True
        return False
    implicit = next(iter(param.implicit_systems), None) if param.implicit_systems else None
    if clause.missing is not None:
        present = has_value(vals, param)
        return present != clause.missing
    ptype = param.type
    if ptype == "string":
        return match_string([s for v in vals for s in string_parts(v)], clause)
    if ptype == "token":
        if param.code == "_id":
            return any(tv.code == resource.get("id") for tv in clause.values) != (clause.modifier == "not")
        return match_token(vals, clause, implicit)
    if ptype == "reference":
        return match_reference(vals, clause, param)
    if ptype == "date":
        ranges = target_ranges(vals)
        return any(date_matches(r, dv, now) for r in ranges for dv in clause.values)
    if ptype == "uri":
        for uv in clause.values:
            for v in vals:
                if clause.modifier == "below" and v.startswith(uv.text):
                    return True
                if clause.modifier == "above" and (uv.text == v or uv.text.startswith(v.rstrip("/") + "/")):
                    return True
                if clause.modifier is None and v == uv.text:
                    return True
        return False
    if ptype == "composite":
        return match_composite(resource, vals, clause, param)
    raise AssertionError(f"oracle does not handle {ptype}")


def has_value(vals: list, param) -> bool:
    if param.type == "string":
        return any(string_parts(v) for v in vals)
    if param.type == "reference":
        return any(ref_target(v) or (isinstance(v, dict) and v.get("identifier")) for v in vals)
    return bool(vals)


def match_composite(resource: dict, nodes: list, clause: Clause, param) -> bool:
    for node in nodes:
        for cv in clause.values:
            ok = True
            for comp, part in zip(param.components, cv.parts, strict=True):
                sub = [x for x in (node.get(comp.expression) if isinstance(node, dict) else None,) if x is not None]
                if isinstance(part, TokenValue):
                    systems = [p.code_system for p in comp.paths or () if p.code_system]
                    pairs = [p for v in sub for p in codings(v, systems[0] if systems else None)]
                    ok = ok and token_matches(pairs, part)
                elif isinstance(part, ReferenceValue):
                    fake = Clause(comp.code, param, None, (part,))
                    ok = ok and match_reference(sub, fake, type("P", (), {"targets": ()})())
                else:
                    ok = False
            if ok:
                return True
    return False


def matches(resource: dict, query: SearchQuery, db: dict[str, list[dict]] | None = None,
            now: datetime | None = None) -> bool:
    return all(match_clause(resource, c, db, now) for c in query.clauses)
