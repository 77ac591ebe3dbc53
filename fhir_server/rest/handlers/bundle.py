"""batch and transaction Bundles: https://hl7.org/fhir/R4/http.html#transaction.

Every entry is parsed into an Interaction and runs through the same dispatcher as a direct HTTP
request, so each entry gets its own access decision. A transaction runs inside one MongoDB
unit of work (a MongoDB multi-document transaction, records.unit()); on an engine without them we
refuse it up front instead of applying half of it.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from urllib.parse import parse_qsl, urlsplit

import orjson

from fhir_server.fhir import offload
from fhir_server.fhir.outcome import FhirError
from fhir_server.fhir.types import SUPPORTED, URN_UUID_RE
from fhir_server.fhir.validation import structural_issues
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers import conditional
from fhir_server.rest.handlers.common import materialize, off_loop, resource_body
from fhir_server.rest.interaction import BUNDLE, CREATE, SEARCH_TYPE, Interaction, parse
from fhir_server.rest.result import Result, entry_response, error_result
from fhir_server.storage.documents import Version

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_ENTRY_HEADERS = {"ifMatch": "if-match", "ifNoneMatch": "if-none-match", "ifModifiedSince": "if-modified-since",
                  "ifNoneExist": "if-none-exist"}


async def bundle(ctx: RequestContext, ix: Interaction, dispatch) -> Result:
    if ix.header("x-provenance") is not None:  # R4 defines it for the write of one resource
        raise FhirError(400, "not-supported", "X-Provenance applies to the write of one resource, not to a Bundle: "
                                              "each entry gets its own Provenance")
    read = await off_loop(ix, _read_bundle, ctx.settings.max_bundle_entries)
    body, spans = read.value
    resources = EntryResources(read.blob, spans)
    entries = body.get("entry") or []
    ix.bundle_type = body["type"]
    if body["type"] == "batch":
        return await _batch(ctx, ix, entries, resources, dispatch)
    return await _transaction(ctx, ix, entries, resources, dispatch)


class EntryResources:
    """Each entry's resource as JSON (None when it has none, or one that is not an object), sliced
    from one blob when its turn comes."""

    def __init__(self, blob: bytes, spans: list[tuple[int, int] | None]) -> None:
        self.blob, self.spans = blob, spans

    def __getitem__(self, index: int) -> bytes | None:
        span = self.spans[index]
        return None if span is None else self.blob[span[0]:span[1]]


def _read_bundle(ix: Interaction, max_entries: int) -> offload.WithBlob:
    """The Bundle without its entries' resources, and the entries' resources as JSON, one after
    the other in one blob, with where each starts and ends. Its entry count is checked before any
    validation, and only the Bundle's own elements are validated here: each entry's resource is
    validated by its own interaction, after the access decision on it (a token that may not write
    has its entries refused without their content being validated).

    The resources travel as JSON because a large Bundle is read in a worker process: its parsed
    form would be unpickled on the server in one call that holds the GIL (13 ms for 20 MB, the
    event loop stopped meanwhile); each entry's JSON is parsed when its turn comes instead (~10 µs
    for 20 KB, between two entries). As one blob they come back through a file, not the worker's
    result pipe (offload.WithBlob)."""
    body = resource_body(ix)
    if body.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", "POST to the base URL takes a batch or transaction Bundle", ["resourceType"])
    btype = body.get("type")
    if btype not in ("batch", "transaction"):
        raise FhirError(400, "value", "Bundle.type must be batch or transaction", ["Bundle.type"])
    entries = body.get("entry") or []
    if isinstance(entries, list) and len(entries) > max_entries:
        raise FhirError(413, "too-costly", f"a Bundle may carry at most {max_entries} entries")
    shell = dict(body)
    if isinstance(entries, list):
        shell["entry"] = [{k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                          for e in entries]
    issues = structural_issues(shell, "Bundle")
    if issues:
        raise FhirError(400, issues[0].code, issues[0].diagnostics, issues=issues)
    # the shell validated above is what goes back (a resource that is not an object goes as missing)
    parts: list[bytes] = []
    spans: list[tuple[int, int] | None] = []
    at = 0
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            part = orjson.dumps(e["resource"])
            parts.append(part)
            spans.append((at, at + len(part)))
            at += len(part)
        else:
            spans.append(None)
    return offload.WithBlob((shell, spans), b"".join(parts))


def _entry_interaction(ctx: RequestContext, ix: Interaction, entry: dict, index: int,
                       raw: bytes | None) -> Interaction:
    req = entry.get("request")
    if not isinstance(req, dict) or not req.get("method") or not req.get("url"):
        raise FhirError(400, "required", "entry.request with method and url is required",
                        [f"Bundle.entry[{index}].request"])
    url = req["url"]
    if url.startswith(ctx.base_url + "/"):
        url = url[len(ctx.base_url) + 1:]
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        raise FhirError(400, "not-supported", f"entry url '{url[:80]}' is not on this server",
                        [f"Bundle.entry[{index}].request.url"])
    headers = {"prefer": ix.header("prefer") or "", "accept": "application/fhir+json"}
    for element, header in _ENTRY_HEADERS.items():
        if isinstance(req.get(element), str):
            headers[header] = req[element]
    resource = orjson.loads(raw) if raw is not None else entry.get("resource")
    method = req["method"]
    if method in ("POST", "PUT", "PATCH") and not isinstance(resource, dict):
        raise FhirError(400, "required", f"a {method} entry needs a resource", [f"Bundle.entry[{index}].resource"])
    eix = parse(method, parts.path.lstrip("/"), parts.query, headers,
                resource=resource if method in ("POST", "PUT", "PATCH") else None)
    eix.size = len(raw) if raw is not None else 0
    return eix


async def _entry_result(ctx: RequestContext, ix: Interaction, dispatch) -> dict:
    result = await dispatch(ctx, ix)
    await materialize(result)
    out: dict = {}
    if result.status < 400:
        body = result.fragment()
        if body is not None:
            out["resource"] = body
        out["response"] = entry_response(result, result.headers.get("Location"))
    else:
        out["response"] = {"status": str(result.status), "outcome": result.resource}
    return out


async def _batch(ctx: RequestContext, ix: Interaction, entries: list, resources: EntryResources,
                 dispatch) -> Result:
    out = []
    for i, entry in enumerate(entries):
        await asyncio.sleep(0)  # entries refused without I/O never suspend: let other requests run
        try:
            entry_ix = _entry_interaction(ctx, ix, entry, i, resources[i])
            if entry_ix.kind == BUNDLE:
                raise FhirError(400, "not-supported", "Bundles cannot be nested")
            out.append(await _entry_result(ctx, entry_ix, dispatch))
        except FhirError as err:
            out.append({"response": {"status": str(err.status), "outcome": error_result(err).resource}})
    return Result(status=200, resource={"resourceType": "Bundle", "type": "batch-response", "entry": out})


async def _transaction(ctx: RequestContext, ix: Interaction, entries: list, resources: EntryResources,
                       dispatch) -> Result:
    parsed: list[Interaction] = []
    for i, entry in enumerate(entries):
        if i % 64 == 63:
            await asyncio.sleep(0)  # each entry's resource is parsed here: let other requests run
        try:
            entry_ix = _entry_interaction(ctx, ix, entry, i, resources[i])
        except FhirError as err:
            err.issues[0].expression = err.issues[0].expression or [f"Bundle.entry[{i}]"]
            raise
        if entry_ix.kind == BUNDLE:
            raise FhirError(400, "not-supported", "Bundles cannot be nested", [f"Bundle.entry[{i}]"])
        parsed.append(entry_ix)
    await _resolve_conditional_creates(ctx, entries, parsed)
    _assign_ids(entries, parsed)
    await _resolve_conditional_references(ctx, parsed)
    order = sorted(range(len(parsed)), key=lambda i: _ORDER.get(parsed[i].method, 9))
    results: list[dict | None] = [None] * len(parsed)
    async with ctx.data.unit() as unit:
        tctx = ctx.in_unit(unit)
        for i in order:
            await asyncio.sleep(0)
            result = await dispatch(tctx, parsed[i])
            if result.status >= 400:
                raise FhirError(result.status, result.resource["issue"][0]["code"],
                                f"entry {i} failed: {result.resource['issue'][0]['diagnostics']}",
                                [f"Bundle.entry[{i}]"])
            await materialize(result)
            body = result.fragment()
            results[i] = {**({"resource": body} if body is not None else {}),
                          "response": entry_response(result, result.headers.get("Location"))}
    return Result(status=200, resource={"resourceType": "Bundle", "type": "transaction-response", "entry": results})


async def _resolve_conditional_creates(ctx: RequestContext, entries: list, parsed: list[Interaction]) -> None:
    """A POST with ifNoneExist that matches an existing resource: references to its urn:uuid must
    point at that resource, so resolve the condition before ids are assigned
    (https://hl7.org/fhir/R4/http.html#trules)."""
    for eix in parsed:
        if_none_exist = eix.header("if-none-exist") if eix.kind == CREATE else None
        if if_none_exist:
            found = await conditional.matches(ctx, eix, parse_qsl(if_none_exist.lstrip("?")), 2)
            if len(found) > 1:
                raise FhirError(412, "duplicate", "an ifNoneExist condition matches several resources")
            if found:
                eix.existing = found[0]


def _assign_ids(entries: list, parsed: list[Interaction]) -> None:
    """Give POSTed entries their ids now and rewrite every reference to their urn:uuid fullUrls."""
    mapping: dict[str, str] = {}
    for entry, eix in zip(entries, parsed):
        full_url = entry.get("fullUrl")
        if eix.kind == CREATE and isinstance(full_url, str) and URN_UUID_RE.fullmatch(full_url):
            if eix.existing is not None:
                assert isinstance(eix.existing, Version)  # set by _resolve_conditional_creates
                mapping[full_url] = f"{eix.type}/{eix.existing.id}"
                continue
            new_id = str(uuid.uuid4())
            mapping[full_url] = f"{eix.type}/{new_id}"
            eix.id = new_id
    for eix in parsed:
        if eix.resource is not None and mapping:
            _rewrite(eix.resource, mapping)


_CONDITIONAL_REF = re.compile(r"(?P<type>[A-Z][A-Za-z]+)\?(?P<query>.+)")


async def _resolve_conditional_references(ctx: RequestContext, parsed: list[Interaction]) -> None:
    """`Practitioner?identifier=…` references become the one resource they match
    (https://hl7.org/fhir/R4/http.html#trules): no match or several fail the whole transaction."""
    resolved: dict[str, str] = {}
    for eix in parsed:
        if eix.resource is None:
            continue
        for ref in _references(eix.resource):
            m = _CONDITIONAL_REF.fullmatch(ref)
            if m is None or ref in resolved or m["type"] not in SUPPORTED:
                continue
            probe = Interaction(kind=SEARCH_TYPE, method="GET", type=m["type"])
            found = await conditional.matches(ctx, probe, parse_qsl(m["query"], keep_blank_values=True), 2)
            if len(found) != 1:
                raise FhirError(412 if found else 404, "multiple-matches" if found else "not-found",
                                f"the conditional reference '{ref[:120]}' matches "
                                f"{'several resources' if found else 'no resource'}; nothing was applied")
            resolved[ref] = f"{m['type']}/{found[0].id}"
    if resolved:
        for eix in parsed:
            if eix.resource is not None:
                _rewrite(eix.resource, resolved)


def _references(node) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out.append(value)
            else:
                out.extend(_references(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(_references(item))
    return out


def _rewrite(node, mapping: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("reference", "url") and isinstance(value, str) and value in mapping:
                node[key] = mapping[value]
            else:
                _rewrite(value, mapping)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item, mapping)
