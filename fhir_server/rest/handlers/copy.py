"""`Patient/{id}/$copy`: the patient's copy of their record as one ZIP download (issue 11, item 3;
the DMP leaflet: "à tout moment, obtenir une copie de son dossier").

What goes in is what the caller may read, through the data handle like `$everything` (consent,
labels, scopes; each disclosure audited before the response): the compartment and what it
references as a FHIR Bundle, each document's attachments as files under their original names, the
access history the caller may read (for the patient: every AuditEvent of their record), an
`index.html` and SHA-256 hashes (rest/archive.py). The archive is complete before the first byte is
sent (so its AuditEvents are stored first, and a failure half-way is an OperationOutcome, not a
truncated file), in a spooled temporary file: memory does not grow with the record's size.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson

from fhir_server.fhir.outcome import FhirError
from fhir_server.records.search import SearchPage
from fhir_server.rest.archive import Archive, extension_for, index_html, safe_name
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.everything import referenced
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result
from fhir_server.search import mongo
from fhir_server.search.parse import parse
from fhir_server.storage.documents import Version

PAGE = 200
HISTORY_IN_PAGE = 2000  # the newest events shown in index.html (all are in access-history.json)


async def copy(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.type != "Patient" or ix.id is None:
        raise FhirError(400, "not-supported", "$copy is an operation on one Patient: Patient/{id}/$copy")
    pid = ix.id
    patient = orjson.loads((await ctx.data.read("Patient", pid)).json or b"{}")  # 404 unless visible
    archive = Archive()
    try:
        seen = _Seen()
        await archive.add_chunks("record.json", _record_bundle(ctx, pid, seen), "application/fhir+json",
                                 compress=True)
        documents = [await _attachments(ctx, archive, d, seen) for d in seen.documents]
        events: list[dict] = []
        await archive.add_chunks("access-history.json", _history_bundle(ctx, pid, events), "application/fhir+json",
                                 compress=True)
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        page = index_html(patient, sorted(documents, key=lambda d: d["date"], reverse=True),
                          [_history_row(e, seen) for e in events[:HISTORY_IN_PAGE]], seen.counts, generated)
        await archive.add_bytes("index.html", page.encode(), "text/html")
        await archive.finish()
    except BaseException:
        archive.discard()
        raise
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return Result(status=200, stream=archive.stream(), media_type="application/zip",
                  headers={"Content-Disposition": f'attachment; filename="dossier-{safe_name(pid, "patient")}-{stamp}.zip"',
                           "Content-Length": str(archive.size()), "X-Content-Type-Options": "nosniff",
                           "Cache-Control": "no-store"})


class _Seen:
    """What the Bundle pass learned for the files and the page: documents, names, counts."""

    def __init__(self) -> None:
        self.documents: list[dict] = []
        self.names: dict[str, str] = {}  # "Practitioner/1" -> display name
        self.titles: dict[str, str] = {}  # "DocumentReference/1" -> title
        self.counts: dict[str, int] = {}


async def _record_bundle(ctx: RequestContext, pid: str, seen: _Seen) -> AsyncIterator[bytes]:
    """The compartment and what it references as one `collection` Bundle, page by page."""
    yield b'{"resourceType":"Bundle","type":"collection","entry":['
    first, position, done = True, None, set()
    query = referenced(ctx)
    while True:
        docs: dict = {}
        matches, position = await ctx.data.everything(pid, ctx.data.compartment_types, since=None, count=PAGE,
                                                      after=position, docs=docs)
        included, _ = await ctx.data.includes(query, SearchPage(matches, None, None, docs))
        parts = []
        for v in [*matches, *included]:
            key = f"{v.type}/{v.id}"
            if key in done or v.json is None:
                continue
            done.add(key)
            seen.counts[v.type] = seen.counts.get(v.type, 0) + 1
            _learn(seen, v)
            parts.append(b'{"fullUrl":' + orjson.dumps(ctx.url(key)) + b',"resource":' + v.json + b"}")
        if parts:
            yield (b"" if first else b",") + b",".join(parts)
            first = False
        if position is None:
            break
    yield b"]}"


def _learn(seen: _Seen, v: Version) -> None:
    if v.type not in ("DocumentReference", "Practitioner", "Organization", "Patient"):
        return
    r = orjson.loads(v.json or b"{}")
    key = f"{v.type}/{v.id}"
    if v.type == "DocumentReference":
        title = r.get("description") or next((c["attachment"].get("title") for c in r.get("content", [])
                                              if c.get("attachment", {}).get("title")), None) or _concept(r.get("type"))
        seen.titles[key] = title or v.id
        seen.documents.append({"id": v.id, "date": r.get("date") or "", "type": _concept(r.get("type")),
                               "title": seen.titles[key], "authors": [a.get("reference") or a.get("display", "")
                                                                      for a in r.get("author", [])],
                               "attachments": [c.get("attachment", {}) for c in r.get("content", [])]})
    elif v.type == "Organization":
        seen.names[key] = r.get("name") or key
    else:
        n = (r.get("name") or [{}])[0]
        seen.names[key] = (" ".join([*n.get("prefix", []), *n.get("given", []), n.get("family", "")]).strip()
                           or n.get("text") or key)


def _concept(c: dict | None) -> str:
    if not c:
        return ""
    return c.get("text") or next((x.get("display") or x.get("code", "") for x in c.get("coding", [])), "")


async def _attachments(ctx: RequestContext, archive: Archive, doc: dict, seen: _Seen) -> dict:
    """Each attachment of a document as its own file: inline data, or the Binary it points to
    (read through the data handle: a Binary the caller may not see is left out)."""
    files = []
    for n, att in enumerate(doc["attachments"], start=1):
        ctype = att.get("contentType") or "application/octet-stream"
        title = att.get("title") or doc["title"] or doc["id"]
        base = safe_name(title.rsplit(".", 1)[0] if "." in title[-6:] else title, doc["id"])
        path = f"documents/{doc['date'][:10] or 'undated'} {base}{'' if n == 1 else f' ({n})'}{extension_for(ctype)}"
        chunks = await _content(ctx, att)
        if chunks is None:
            continue
        member = await archive.add_chunks(path, chunks, ctype)
        files.append((member.path, title))
    authors = ", ".join(seen.names.get(a, a) for a in doc["authors"] if a)
    return {"date": doc["date"][:10], "type": doc["type"], "title": doc["title"], "author": authors,
            "files": files}


async def _content(ctx: RequestContext, att: dict) -> AsyncIterator[bytes] | None:
    if att.get("data"):
        try:
            return _once(base64.b64decode(att["data"], validate=True))
        except ValueError:
            return None
    url = att.get("url") or ""
    marker = url.rfind("Binary/")
    if marker < 0:
        return None  # an external address: not ours to fetch
    bid = url[marker + len("Binary/"):].split("/")[0]
    try:
        v = await ctx.data.read("Binary", bid)
    except FhirError:
        return None  # hidden from the caller, or gone
    if v.binary_file is not None:
        return ctx.data.binary_content(v)
    data = orjson.loads(v.json or b"{}").get("data")
    return _once(base64.b64decode(data) if data else b"")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _history_bundle(ctx: RequestContext, pid: str, events: list[dict]) -> AsyncIterator[bytes]:
    """The AuditEvents of the record the caller may read, newest first (none if they may read none)."""
    yield b'{"resourceType":"Bundle","type":"collection","entry":['
    query = parse("AuditEvent", [("patient", f"Patient/{pid}"), ("_sort", "-date")])
    sort = mongo.sort_spec(query)
    after, first = None, True
    while True:
        try:
            page = await ctx.data.search("AuditEvent", query, compartment=None, sort=sort, count=PAGE,
                                         after=after, want_total=False)
        except FhirError:
            break  # not allowed to read audit: the archive says nothing of it
        parts = []
        for v in page.matches:
            if v.json is None:
                continue
            if len(events) < HISTORY_IN_PAGE:
                events.append(orjson.loads(v.json))
            parts.append(b'{"fullUrl":' + orjson.dumps(ctx.url(f"AuditEvent/{v.id}")) + b',"resource":' + v.json + b"}")
        if parts:
            yield (b"" if first else b",") + b",".join(parts)
            first = False
        if page.next_position is None:
            break
        after = page.next_position
    yield b"]}"


OUTCOME = {"0": "succès / success", "4": "refusé ou erreur / refused or failed", "8": "échec / failed",
           "12": "échec / failed"}


def _history_row(e: dict, seen: _Seen) -> dict:
    requestor: dict = next((a for a in e.get("agent", []) if a.get("requestor")), {})
    who: dict = requestor.get("who") or {}
    ref = who.get("reference")
    who_text = seen.names.get(ref or "", who.get("display") or ref or (who.get("identifier") or {}).get("value", ""))
    what_refs = [x["what"]["reference"] for x in e.get("entity", []) if x.get("what", {}).get("reference")
                 and not x["what"]["reference"].startswith("Patient/")]
    what = ", ".join(seen.titles.get(r.split("/_history/")[0], r.split("/_history/")[0]) for r in what_refs[:5])
    action = (e.get("subtype") or [{}])[0].get("code") or (e.get("type") or {}).get("display", "")
    why = "; ".join(((p.get("coding") or [{}])[0].get("code", "") + (f" ({p['text']})" if p.get("text") else ""))
                    for p in e.get("purposeOfEvent", []))
    return {"when": e.get("recorded", ""), "who": who_text, "what": f"{action} {what}".strip(), "why": why,
            "outcome": OUTCOME.get(e.get("outcome", ""), e.get("outcome", ""))}
