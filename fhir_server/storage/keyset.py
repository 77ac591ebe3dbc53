"""Keyset ("seek") paging over any sort, without skip/offset.

A page ends at some document; the next page is every matching document that sorts strictly after
it. Sort keys may be arrays (a patient has several names): MongoDB sorts an array ascending by its
smallest element and descending by its largest, and documents without the field first ascending,
last descending. The filters below express "sorts after" in exactly those terms using `$not`, so
paging is exact for multi-valued fields too and never re-reads skipped rows. The sort always ends
with `_id`, which makes every position unique.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

_NOTHING: dict = {"_id": {"$in": []}}


def sort_key(doc: dict, field: str, direction: int) -> Any:
    """The value MongoDB sorts `doc` by for `field` (dotted paths through arrays): min asc, max desc."""
    values = list(_values(doc, field.split(".")))
    if not values:
        return None
    return min(values) if direction > 0 else max(values)


def values(doc: dict, field: str) -> list[Any]:
    """Every value at a (dotted) path, arrays flattened."""
    return list(_values(doc, field.split(".")))


def _values(node: Any, path: list[str]):
    if isinstance(node, list):
        for item in node:
            yield from _values(item, path)
        return
    if not path:
        if node is not None:
            yield node
        return
    if isinstance(node, dict) and path[0] in node:
        yield from _values(node[path[0]], path[1:])


def position(doc: dict, sort: list[tuple[str, int]]) -> list[Any]:
    return [sort_key(doc, field, direction) for field, direction in sort]


def after(sort: list[tuple[str, int]], values: list[Any]) -> dict:
    """Filter for documents sorting strictly after the position `values` under `sort`."""
    (field, direction), rest = sort[0], sort[1:]
    value = values[0]
    if not rest:
        return _strictly_after(field, direction, value)
    return {"$or": [_strictly_after(field, direction, value),
                    {"$and": [_equal(field, direction, value), after(rest, values[1:])]}]}


def _strictly_after(field: str, direction: int, value: Any) -> dict:
    if field == "_id":
        return {"_id": {"$gt" if direction > 0 else "$lt": value}}
    if direction > 0:
        if value is None:  # missing sorts first: everything that has the field comes after
            return {field: {"$exists": True}}
        return {"$and": [{field: {"$exists": True}}, {field: {"$not": {"$lte": value}}}]}
    if value is None:  # missing sorts last descending: nothing after but ties
        return _NOTHING
    return {field: {"$not": {"$gte": value}}}  # max < value, or missing (last)


def _equal(field: str, direction: int, value: Any) -> dict:
    if field == "_id":
        return {"_id": value}
    if value is None:
        return {field: {"$exists": False}}
    if direction > 0:
        return {"$and": [{field: value}, {field: {"$not": {"$lt": value}}}]}
    return {"$and": [{field: value}, {field: {"$not": {"$gt": value}}}]}


def encode(values: list[Any]) -> list:
    """JSON-safe form of a position (datetimes tagged), for an opaque cursor."""
    return [{"$d": int(v.timestamp() * 1000)} if isinstance(v, datetime) else v for v in values]


def decode(values: list) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, dict):
            if set(v) != {"$d"} or not isinstance(v["$d"], int):
                raise ValueError("bad cursor value")
            out.append(datetime.fromtimestamp(v["$d"] / 1000, timezone.utc))
        elif v is None or isinstance(v, (str, int, float, bool)):
            out.append(v)
        else:
            raise ValueError("bad cursor value")
    return out
