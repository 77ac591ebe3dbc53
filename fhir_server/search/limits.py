"""Caps on what one search may ask of the database (issue 12, "query amplification").

Checked on the parameters as received, before parsing resolves anything: the number of search
parameters, the values ORed in them, chain and `_has` depth, and `_include`/`_revinclude` count.
A search over a cap is refused whole (400, OperationOutcome `too-costly`) rather than truncated:
a silently narrowed search would return wrong results.
"""

from __future__ import annotations

from dataclasses import dataclass

from .parse import split_escaped

RESULT_PARAMS = ("_sort", "_count", "_total", "_summary", "_elements", "_format", "_pretty", "_cursor")


@dataclass(frozen=True, slots=True)
class SearchLimits:
    max_params: int = 64
    max_values: int = 500
    max_chain_depth: int = 4
    max_has_depth: int = 2
    max_includes: int = 10


def too_costly(pairs: list[tuple[str, str]], limits: SearchLimits) -> str | None:
    """Why this search is over a cap, or None."""
    criteria = includes = values = 0
    for name, value in pairs:
        base = name.split(":", 1)[0]
        if base in RESULT_PARAMS:
            continue
        if base in ("_include", "_revinclude"):
            includes += 1
            if includes > limits.max_includes:
                return f"at most {limits.max_includes} _include and _revinclude parameters per search"
            continue
        criteria += 1
        if criteria > limits.max_params:
            return f"at most {limits.max_params} search parameters per search"
        values += len(split_escaped(value, ","))
        if values > limits.max_values:
            return f"at most {limits.max_values} values in all the parameters of one search"
        has = name.count("_has:")
        if has > limits.max_has_depth:
            return f"_has may nest at most {limits.max_has_depth} levels"
        links = _chain_links(name)
        if links + has > limits.max_chain_depth:
            return f"chains (with _has) may be at most {limits.max_chain_depth} levels deep"
    return None


def _chain_links(name: str) -> int:
    """`subject:Patient.organization.name`: 2 links; the dots of a `_has` chain count too."""
    return name.count(".")
