"""Bulk Data export's HTTP side (https://hl7.org/fhir/uv/bulkdata/export.html, v2): kick-off,
status polling, cancellation and file download. HTTP semantics only; what is exported and who may
see a job is decided behind `ctx.data` (records/export.py).

* Kick-off: `GET [base]/$export`, `[base]/Patient/$export`, `[base]/Patient/{id}/$export` with
  `Prefer: respond-async` (400 without) → 202 + `Content-Location` of the status URL.
  Parameters: `_outputFormat` (application/fhir+ndjson, application/ndjson, ndjson), `_since`,
  `_type`; any other is ignored, or 400 under `Prefer: handling=strict`.
* Status `GET [base]/_bulk/{job}`: 202 with `X-Progress` and `Retry-After` while running; 200 and
  the completion manifest (`application/json`) when done; 500 OperationOutcome if it failed.
  `DELETE` cancels (202) and deletes the files; the status URL is then 404.
* Files `GET [base]/_bulk/{job}/{n}.ndjson`: `application/fhir+ndjson`, streamed.
Only the principal who kicked off reaches the status and files (404 for anyone else); expired
jobs answer 410 to their owner.
"""

from __future__ import annotations

import math
from email.utils import format_datetime

import orjson

from fhir_server.fhir.outcome import FhirError
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers.common import instant_param
from fhir_server.rest.interaction import BULK_PATH, Interaction
from fhir_server.rest.result import Result, information
from fhir_server.storage.documents import aware, fhir_instant

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
SUPPORTED = frozenset({"_outputFormat", "_since", "_type", "_format", "_pretty"})


def _prefer(ix: Interaction) -> set[str]:
    return {p.strip().lower().replace(" ", "") for p in (ix.header("prefer") or "").split(",") if p.strip()}


async def kickoff(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.type not in (None, "Patient"):
        raise FhirError(404, "not-supported", "$export is defined at system level, on Patient and on Patient/{id}")
    prefer = _prefer(ix)
    if "respond-async" not in prefer:
        raise FhirError(400, "required", "a bulk export is asynchronous: send 'Prefer: respond-async'")
    unknown = sorted({name for name, _ in ix.params} - SUPPORTED)
    if unknown and "handling=strict" in prefer:
        raise FhirError(400, "not-supported", f"unsupported parameter(s): {', '.join(unknown)}")
    fmt = ix.param("_outputFormat")
    if fmt is not None and fmt.strip().replace(" ", "+") not in OUTPUT_FORMATS:
        raise FhirError(400, "not-supported", f"_outputFormat '{fmt[:80]}' is not supported; use {NDJSON}",
                        ["_outputFormat"])
    since = instant_param(ix.param("_since"))
    wanted = ix.param("_type")
    types = None
    if wanted is not None:
        types = [t.strip() for t in wanted.split(",") if t.strip()]
        if not types:
            raise FhirError(400, "value", "_type names no type", ["_type"])
    kind = "system" if ix.type is None else "patient" if ix.id is not None else "patients"
    path = "$export" if ix.type is None else f"Patient/{ix.id}/$export" if ix.id else "Patient/$export"
    query = "&".join(f"{a}={b}" for a, b in ix.params)
    request = ctx.url(path) + (f"?{query}" if query else "")
    jid = await ctx.data.export_kickoff(kind, ix.id, types, since, request, ctx.base_url)
    body = information(f"export {jid} accepted; poll its status URL (Content-Location)")
    return Result(status=202, resource=body, headers={"Content-Location": ctx.url(BULK_PATH, jid)})


async def status(ctx: RequestContext, ix: Interaction) -> Result:
    jid = ix.job
    assert jid is not None, "the parser sets the job of a status URL"
    if ix.method == "DELETE":
        await ctx.data.export_cancel(jid)
        return Result(status=202, resource=information("the export was cancelled and its files deleted"))
    job, parts = await ctx.data.export_job(jid)
    state = job.get("state")
    if state == "failed":
        raise FhirError(500, "exception", job.get("error") or "the export failed")
    if state != "completed":
        retry = max(1, math.ceil(ctx.settings.export_poll_seconds))
        done = sum(p["count"] for p in parts)
        progress = "queued" if state == "queued" else f"running: {done} resources in {len(parts)} files"
        return Result(status=202, headers={"X-Progress": progress, "Retry-After": str(retry)})
    manifest = {
        "transactionTime": fhir_instant(job["until"]),
        "request": job["request"],
        "requiresAccessToken": True,
        "output": [{"type": p["type"], "url": ctx.url(BULK_PATH, jid, f"{p['n']}.ndjson"), "count": p["count"]}
                   for p in parts],
        "error": [],
    }
    headers = {"Expires": format_datetime(aware(job["expires"]), usegmt=True)} if job.get("expires") else {}
    return Result(status=200, stream=_once(orjson.dumps(manifest)), media_type="application/json", headers=headers)


async def download(ctx: RequestContext, ix: Interaction) -> Result:
    assert ix.job is not None and ix.part is not None, "the parser sets the job and file of a file URL"
    _, content = await ctx.data.export_file(ix.job, ix.part)
    return Result(status=200, stream=content, media_type=NDJSON)


async def _once(data: bytes):
    yield data
