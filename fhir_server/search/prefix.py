"""String prefix search as an equality: prefix tokens stored at write time.

R4 string search is "equals or starts with", case- and accent-insensitive
(https://hl7.org/fhir/R4/search.html#string). On the folded values (normalize.fold) that is an
anchored `$regex`, which MongoDB serves from an index but FerretDB v1 never pushes down to SQL, so
every `Patient?family=dup` decoded the whole collection in Go (docs/benchmarks.md). Equality on a
top-level field is pushed down by every engine and served by its index (a multikey index on
MongoDB, a GIN index on FerretDB/PostgreSQL), so the parameters people search by prefix also store
`p_<code>`: every prefix of 1..MAX_PREFIX characters of each folded value.

A query q of at most MAX_PREFIX characters is then exactly `{p_<code>: q}` (q is one of a value's
stored prefixes iff that value starts with q). A longer query keeps the index for its first
MAX_PREFIX characters and checks the rest with the anchored regex on `s_<code>`, which the engine
applies to the few candidates the equality selected (FerretDB in Go, MongoDB after the index
bounds). The bound keeps index entries per value at most MAX_PREFIX: 8 characters already select
a handful of names in a population (French family names average about 7 characters).

Only the parameters listed in PREFIXED get tokens (and a single-field index, extract.index_keys):
the others keep the plain regex, to keep documents small. Adding a parameter here needs
`fhir-server reindex --type T` for existing data, as any change of index fields does.
"""

from __future__ import annotations

import re

from . import normalize as nz
from .registry import PREFIX, STRING, SearchParam

MAX_PREFIX = 8

# resource type -> string parameters served by prefix tokens (the ones searched by name)
PREFIXED: dict[str, frozenset[str]] = {
    "Patient": frozenset({"name", "family", "given"}),
    "Practitioner": frozenset({"name", "family", "given"}),
    "Organization": frozenset({"name"}),
}


def prefixed(param: SearchParam) -> bool:
    """Whether `param` stores prefix tokens (string parameters are defined per type: base = type)."""
    return param.type == "string" and param.code in PREFIXED.get(param.base, ())


def tokens(folded: list[str]) -> list[str]:
    """Every prefix of 1..MAX_PREFIX characters of each folded value, without duplicates."""
    out: dict[str, None] = {}
    for value in folded:
        for n in range(1, min(len(value), MAX_PREFIX) + 1):
            out[value[:n]] = None
    return list(out)


def condition(param: SearchParam, texts: list[str]) -> dict:
    """Filter for a default (starts-with) string search on a prefixed parameter, OR of `texts`."""
    field, folded_field = param.f(PREFIX), param.f(STRING)
    queries = list(dict.fromkeys(nz.fold(t) for t in texts))
    if "" in queries:  # folds to nothing (only marks or blanks): every value starts with it
        return {folded_field: {"$exists": True}}
    short = [q for q in queries if len(q) <= MAX_PREFIX]
    conds: list[dict] = []
    if short:
        conds.append({field: short[0]} if len(short) == 1 else {field: {"$in": short}})
    for q in queries:
        if len(q) > MAX_PREFIX:
            conds.append({field: q[:MAX_PREFIX], folded_field: {"$regex": "^" + re.escape(q)}})
    return conds[0] if len(conds) == 1 else {"$or": conds}
