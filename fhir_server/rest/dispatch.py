"""The router: each FHIR interaction kind and the handler that implements it.

Every request, and every Bundle entry, goes through `dispatch`, which first asks the access
decision point. No handler makes its own permission decision about the interaction.
"""

from __future__ import annotations

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from fhir_server.access.decision import Effect
from fhir_server.fhir.outcome import FhirError
from fhir_server.rest import interaction as ix_kinds
from fhir_server.rest.context import RequestContext
from fhir_server.rest.handlers import bundle, capabilities, history, patch, read, search, validate, write
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.result import Result, error_result

OPERATIONS = {"validate": validate.validate}

HANDLERS = {
    ix_kinds.CAPABILITIES: capabilities.capabilities,
    ix_kinds.READ: read.read,
    ix_kinds.VREAD: read.vread,
    ix_kinds.CREATE: write.create,
    ix_kinds.UPDATE: write.update,
    ix_kinds.PATCH: patch.patch,
    ix_kinds.DELETE: write.delete,
    ix_kinds.HISTORY_INSTANCE: history.history,
    ix_kinds.HISTORY_TYPE: history.history,
    ix_kinds.HISTORY_SYSTEM: history.history,
    ix_kinds.SEARCH_TYPE: search.search,
    ix_kinds.SEARCH_SYSTEM: search.search,
}


async def execute(ctx: RequestContext, ix: Interaction) -> Result:
    """Run one interaction; raises FhirError."""
    decision = ctx.services.access.decide(ctx.principal, ix.kind, ix.type, ix)
    if decision.effect is Effect.DENY:
        raise FhirError(403, "forbidden", decision.reason or "access denied")
    await ctx.services.access.enforce(ctx, ix, decision)  # permit-with-filter: stored/incoming resource
    if ix.kind == ix_kinds.BUNDLE:
        return await bundle.bundle(ctx, ix, dispatch)
    if ix.kind == ix_kinds.OPERATION:
        handler = OPERATIONS.get(ix.operation or "")
        if handler is None:
            raise FhirError(404, "not-supported", f"operation ${ix.operation} is not supported")
        return await handler(ctx, ix)
    return await HANDLERS[ix.kind](ctx, ix)


async def dispatch(ctx: RequestContext, ix: Interaction) -> Result:
    """Run one interaction and turn failures into OperationOutcome results (Bundle entries use this)."""
    try:
        return await execute(ctx, ix)
    except FhirError as err:
        return error_result(err)
    except ConnectionFailure:
        return error_result(FhirError(503, "transient", "the database is unavailable; try again"))
    except OperationFailure as exc:
        if exc.has_error_label("TransientTransactionError") or exc.code in (112, 251):  # WriteConflict
            return error_result(FhirError(409, "conflict", "a concurrent change conflicted; try again"))
        raise
    except PyMongoError:
        raise
