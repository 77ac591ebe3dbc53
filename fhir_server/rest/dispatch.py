"""The pipeline of one interaction: decision, data handle, handler, hooks.

Every request and every Bundle entry goes through `dispatch`:

1. the decision point prepares this interaction's `Access` (policies load what they need once);
2. the interaction as a whole is refused (403) when its permission is denied;
3. the handler runs with a `Records` handle, which checks every read and write it makes;
4. the hooks hear `started` and `finished` (with the status), and from `Records` what was
   disclosed and written.

No handler makes a permission decision of its own.
"""

from __future__ import annotations

from dataclasses import replace

import pymongo
from pymongo.errors import ConnectionFailure, DocumentTooLarge, OperationFailure, PyMongoError

from fhir_server.access.decision import Decision, Effect, required
from fhir_server.fhir import interactions as k
from fhir_server.fhir.interactions import Interaction
from fhir_server.fhir.outcome import FhirError
from fhir_server.records.hooks import Event
from fhir_server.records.records import Records
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers import (
    access_history,
    bundle,
    capabilities,
    conformance,
    copy,
    destroy,
    everything,
    explain,
    export,
    history,
    patch,
    read,
    search,
    validate,
    verify,
    write,
)
from fhir_server.rest.result import Result, error_result

OPERATIONS = {"validate": validate.validate, "explain-access": explain.explain_access,
              "everything": everything.everything, "verify": verify.verify, "copy": copy.copy,
              "export": export.kickoff, "destroy": destroy.destroy, "access-history": access_history.access_history}
# reads that run under the database time budget (writes are not cut short half-way)
# the trail of what happened is never rewritten, by anyone (issue 10: 405 for everyone)
IMMUTABLE = frozenset({"AuditEvent", "Provenance"})
BUDGETED = frozenset({k.READ, k.VREAD, k.SEARCH_TYPE, k.SEARCH_SYSTEM, k.HISTORY_INSTANCE, k.HISTORY_TYPE,
                      k.HISTORY_SYSTEM})

HANDLERS = {
    k.CAPABILITIES: capabilities.capabilities,
    k.CONFORMANCE_READ: conformance.read,
    k.CONFORMANCE_SEARCH: conformance.search,
    k.READ: read.read,
    k.VREAD: read.vread,
    k.CREATE: write.create,
    k.UPDATE: write.update,
    k.PATCH: patch.patch,
    k.DELETE: write.delete,
    k.HISTORY_INSTANCE: history.history,
    k.HISTORY_TYPE: history.history,
    k.HISTORY_SYSTEM: history.history,
    k.SEARCH_TYPE: search.search,
    k.SEARCH_SYSTEM: search.search,
    k.EXPORT_STATUS: export.status,
    k.EXPORT_FILE: export.download,
}


async def _bind(ctx: RequestContext, ix: Interaction, event: Event) -> RequestContext:
    """This interaction's context: its access decisions and its data handle."""
    services = ctx.services
    immutable_write = ix.type in IMMUTABLE and ix.kind in (k.UPDATE, k.PATCH, k.DELETE)
    needed = None
    # a bulk export's status and files: no scope of their own, only the job's owner (records/export.py)
    if ix.kind not in k.PUBLIC and ix.kind != k.BUNDLE and ix.kind not in k.JOB_BOUND:
        needed = required(ix)
        if needed is None:
            raise FhirError(403, "forbidden", f"'{ix.kind}' is not permitted")
        # the scopes first: what the token cannot do at all costs no policy's database work
        refused = services.access.scopes_refuse(ctx.principal, *needed)
        if refused is not None and not immutable_write:
            raise _forbidden(ix, needed[1], refused)
    access = await services.access.prepare(ctx.principal, ix, services.repository)
    if immutable_write:
        raise FhirError(405, "not-supported", f"{ix.type} records are immutable: no update, patch or delete")
    if needed is not None:
        decision = access.decide(*needed)
        if decision.effect is Effect.DENY:
            raise _forbidden(ix, needed[1], decision)
    records = Records(services.repository, access, services.hooks, event, ctx.unit, ctx.base_url, services.profiles,
                      services.destroyer, services.provenance, services.trail)
    return replace(ctx, records=records, run=execute)


def _forbidden(ix: Interaction, rtype: str | None, decision: Decision) -> FhirError:
    return FhirError(403, "forbidden", decision.reason or (
        f"the token's scopes do not permit {ix.kind} on {rtype or 'the system'}"))


def _event(ctx: RequestContext, ix: Interaction) -> Event:
    return Event(ix, ctx.principal, ctx.request_id, ctx.in_bundle)


async def execute(ctx: RequestContext, ix: Interaction, event: Event | None = None) -> Result:
    """Run one interaction; raises FhirError."""
    ctx = await _bind(ctx, ix, event or _event(ctx, ix))
    if ix.kind == k.BUNDLE:
        return await bundle.bundle(ctx, ix, dispatch)
    if ix.kind == k.OPERATION:
        handler = OPERATIONS.get(ix.operation or "")
        if handler is None:
            raise FhirError(404, "not-supported", f"operation ${ix.operation} is not supported")
        return await handler(ctx, ix)
    return await HANDLERS[ix.kind](ctx, ix)


async def dispatch(ctx: RequestContext, ix: Interaction) -> Result:
    """Run one interaction, tell the hooks, and turn failures into OperationOutcome results."""
    hooks = ctx.services.hooks
    event = _event(ctx, ix)
    await hooks.started(event)
    error: FhirError | None = None
    try:
        if ix.kind in BUDGETED:
            # a per-interaction database time budget: maxTimeMS on every command, and a client-side
            # deadline on the socket, so a runaway query ends in a 503 instead of holding the worker
            with pymongo.timeout(ctx.settings.db_time_budget_ms / 1000):
                result = await execute(ctx, ix, event)
        else:
            result = await execute(ctx, ix, event)
    except FhirError as err:
        # kept past the except clause: without its traceback, which would hold this frame (and the
        # frame would hold it), a reference cycle per refused Bundle entry left to the cyclic GC
        error = err.with_traceback(None)
    except DocumentTooLarge:  # the last line: handlers refuse oversized resources before any work
        error = FhirError(413, "too-costly", "the resource is too large to be stored")
    except PyMongoError as exc:
        if exc.timeout and ix.kind in BUDGETED:
            error = FhirError(503, "too-costly", "the request exceeded its database time budget; narrow it or try "
                                                 "again later", headers={"Retry-After": "1"})
        elif isinstance(exc, ConnectionFailure):
            error = FhirError(503, "transient", "the database is unavailable; try again")
        elif isinstance(exc, OperationFailure) and (exc.has_error_label("TransientTransactionError")
                                                    or exc.code in (112, 251)):  # WriteConflict
            error = FhirError(409, "conflict", "a concurrent change conflicted; try again")
        else:
            await hooks.finished(event, 500, FhirError(500, "exception", "internal error"))
            raise
    except Exception:
        await hooks.finished(event, 500, FhirError(500, "exception", "internal error"))  # audited, then logged
        raise
    if error is not None:
        result = error_result(error)
    await hooks.finished(event, result.status, error)
    return result
