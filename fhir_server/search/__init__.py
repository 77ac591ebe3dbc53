"""FHIR R4 search (https://hl7.org/fhir/R4/search.html): parameters, indexing, parsing, compilation.

Flow: on every write the storage layer merges `index_fields(resource)` into the stored document; a
search request is `parse`d into a `SearchQuery`, its chains/_has are `resolve`d against the database,
then `compile`d into a MongoDB filter (+ `sort_spec`). `index_specs(type)` lists the indexes to create.
"""

from .extract import index_fields, index_specs
from .mongo import compile, resolve, sort_spec
from .parse import SearchError, SearchQuery, parse
from .registry import SearchParam, params_for

__all__ = [
    "SearchError", "SearchParam", "SearchQuery", "compile", "index_fields", "index_specs", "params_for",
    "parse", "resolve", "sort_spec",
]
