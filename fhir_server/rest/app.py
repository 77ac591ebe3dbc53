"""The ASGI application: one FHIR endpoint, plus /health, /ready and /metrics outside /fhir.

Plain Starlette rather than FastAPI: FHIR's REST API is not shaped like OpenAPI operations, and
the read path stays close to raw Starlette throughput (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Sequence
from urllib.parse import parse_qsl

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fhir_server import composition
from fhir_server.access.decision import Policy
from fhir_server.auth.bearer import authenticate
from fhir_server.auth.pages import STYLE_HASH
from fhir_server.auth.principal import ANONYMOUS
from fhir_server.auth.server import AUTH_ROUTES, fhir_base
from fhir_server.composition import Services
from fhir_server.config import Settings
from fhir_server.fhir import offload, validation
from fhir_server.fhir.outcome import FhirError
from fhir_server.ops import collector
from fhir_server.ops.headers import HostGuardMiddleware, SecurityHeadersMiddleware
from fhir_server.ops.observability import ObservabilityMiddleware, configure_logging
from fhir_server.records.export import ExportRunner
from fhir_server.records.hooks import Hook
from fhir_server.records.records import Records
from fhir_server.rest import interaction as interactions
from fhir_server.rest import openapi
from fhir_server.rest.admission import LargeRequests
from fhir_server.rest.context import RequestContext
from fhir_server.rest.dispatch import dispatch
from fhir_server.rest.formats import negotiate
from fhir_server.rest.render import render
from fhir_server.rest.result import error_result

log = logging.getLogger("fhir_server")
# what the body worker processes run (fhir/offload.py): imported once by their fork server
BODY_WORKER_MODULES = ("fhir_server.rest.handlers.write", "fhir_server.rest.handlers.bundle",
                       "fhir_server.rest.handlers.validate")
FHIR_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Accept", "If-Match", "If-None-Match", "If-None-Exist",
                        "If-Modified-Since", "Prefer", "X-Request-Id", "X-Security-Context"]
CORS_EXPOSED_HEADERS = ["ETag", "Location", "Content-Location", "Last-Modified", "X-Request-Id"]


def create_app(settings: Settings | None = None, *, policies: Sequence[Policy] = (),
               hooks: Sequence[Hook] = ()) -> Starlette:
    """The ASGI app; `policies` and `hooks` are added to the decision point and the pipeline."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    offload.configure(settings.cpu_threads, settings.cpu_max_waiting, settings.cpu_processes, settings.cpu_nice,
                      preload=BODY_WORKER_MODULES)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # fhir.resources imports a type's models at their first use: that was the first request of
        # each type, on the event loop (bench/first_use.py); now while start-up waits for the database
        models = asyncio.create_task(asyncio.to_thread(validation.preload_models))
        try:
            client = composition.connect(settings)
            services = await composition.build(settings, client, policies=policies, hooks=hooks)
        finally:
            await models
        app.state.services = services
        if settings.insecure_dev_mode:
            log.warning("INSECURE DEV MODE: requests without an access token get FULL ACCESS to every record "
                        "(FHIR_INSECURE_DEV_MODE=true). Never use this outside development.")
        engine = services.engine
        log.info("engine ready", extra={"interaction": f"{engine.name} {engine.version} transactions={engine.transactions}"})
        runner = None
        if settings.export_runner:  # bulk export jobs run in every worker (records/export.py)
            runner = asyncio.create_task(ExportRunner(services.repository, services.access, settings,
                                                      services.profiles, Records).run_forever())
        # anyio imports its asyncio backend at its first use, which was the first request with a body,
        # on the event loop (the watchdog saw it under bench/hostile.py; 13 ms on an idle machine)
        anyio.get_cancelled_exc_class()
        collector.settle()  # the start-up heap is never walked by a collection again
        warming = asyncio.create_task(offload.warm())  # the worker processes start while the app serves
        try:
            yield
        finally:
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await warming
            if runner is not None:
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            if services.trail is not None:
                await services.trail.close()  # the last audit batch and chain head reach the database
            await client.close()
            offload.shutdown()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *[Route(path, _auth_endpoint(name), methods=methods) for path, name, methods in AUTH_ROUTES],
        Route("/fhir", fhir_endpoint, methods=FHIR_METHODS),
        Route("/fhir/{path:path}", fhir_endpoint, methods=FHIR_METHODS),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.large_requests = LargeRequests(settings.client_max_large_requests)
    app.add_middleware(SecurityHeadersMiddleware, style_hash=STYLE_HASH, hsts_seconds=settings.hsts_seconds,
                       https_base=(settings.public_base_url or "").startswith("https://"))
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # browser SMART apps on other origins (README "Hardening / deployment")
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=FHIR_METHODS,
                           allow_headers=CORS_REQUEST_HEADERS, expose_headers=CORS_EXPOSED_HEADERS,
                           allow_credentials=False, max_age=600)
    if not settings.public_base_url and not settings.development:
        app.add_middleware(HostGuardMiddleware, allowed=settings.allowed_hosts.split(","))
    app.add_middleware(ObservabilityMiddleware)
    return app


async def openapi_json(request: Request) -> Response:
    """The OpenAPI description of the routes (rest/openapi.py): public, no data, no secret."""
    from fhir_server import __version__

    types = tuple(request.app.state.services.repository.types)
    return JSONResponse(openapi.document(types, __version__), headers={"Cache-Control": "public, max-age=3600"})


AUTH_MAX_BODY = 64 * 1024  # forms of the authorization server are small


class _BodyTooLarge(Exception):
    pass


def _limited(request: Request, limit: int) -> Request:
    """The request, reading at most `limit` body bytes (more raises _BodyTooLarge)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    seen = 0

    async def receive():
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _BodyTooLarge
        return message

    return Request(request.scope, receive)


def _auth_endpoint(name: str):
    """An authorization-server route: its failures are OAuth JSON errors, logged as JSON lines."""

    async def endpoint(request: Request) -> Response:
        try:
            return await getattr(request.app.state.services.auth, name)(_limited(request, AUTH_MAX_BODY))
        except _BodyTooLarge:
            return JSONResponse({"error": "invalid_request", "error_description": "the request body is too large"},
                                status_code=413, headers={"Cache-Control": "no-store"})
        except offload.Overloaded:
            return JSONResponse({"error": "temporarily_unavailable", "error_description": "the server is busy"},
                                status_code=503, headers={"Cache-Control": "no-store", "Retry-After": "1"})
        except Exception:
            log.exception("unhandled error")
            return JSONResponse({"error": "server_error", "error_description": "internal error; the request id "
                                                                               "identifies it in the server logs"},
                                status_code=500, headers={"Cache-Control": "no-store"})

    endpoint.__name__ = name
    return endpoint


def _base_url(request: Request, settings: Settings) -> str:
    return fhir_base(request, settings)


async def _read_body(request: Request, limit: int, seconds: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FhirError(413, "too-costly", f"the request body exceeds the {limit} byte limit")
    chunks, size = [], 0
    try:
        with anyio.fail_after(seconds):  # a body trickled in byte by byte does not hold the request forever
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise FhirError(413, "too-costly", f"the request body exceeds the {limit} byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise FhirError(408, "timeout", f"the request body was not received within {seconds:g} s")
    if size >= JOIN_OFF_LOOP_BYTES:
        return await offload.run(join_body, chunks)
    return join_body(chunks)


# A large body is joined on a thread: the join writes every byte into memory just allocated, and a
# cold 20 MB join took 11-13 ms, the event loop's longest stall under a flood of large bodies
# (10 of 14 stalls over 8 ms; bench/hostile.py). CPython's bytes.join releases the GIL while it
# copies more than 1 MiB (Objects/stringlib/join.h), so the loop runs meanwhile.
JOIN_OFF_LOOP_BYTES = 1024 * 1024


def join_body(chunks: list[bytes]) -> bytes:
    return b"".join(chunks)


async def fhir_endpoint(request: Request) -> Response:
    services: Services = request.app.state.services
    query = request.url.query
    pretty = False
    stack = contextlib.ExitStack()
    try:
        base = _base_url(request, services.settings)
        path = request.path_params.get("path", "")
        # The CapabilityStatement is public (SMART discovery); everything else needs a valid token.
        principal = ANONYMOUS if path == "metadata" else await authenticate(
            request.headers.get("authorization"), base, services)
        # parsed once, here: a search of hundreds of parameters spent a third of its time parsing
        url_params = parse_qsl(query, keep_blank_values=True)
        params = dict(url_params)  # the last value wins, as in Starlette's query_params
        pretty = params.get("_pretty") == "true"
        form_search = request.method == "POST" and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded") and path.endswith("_search")
        limit = services.settings.search_max_body_bytes if form_search else services.settings.max_body_bytes
        if request.method in ("POST", "PUT", "PATCH"):
            # a client's share of the large requests is taken before its body is read (rest/admission.py)
            slot = request.app.state.large_requests.admit(principal, request.headers.get("content-length"))
            stack.enter_context(slot)
            body = await _read_body(request, limit, services.settings.body_timeout_seconds)
        else:
            body = None
        headers = {k: v for k, v in request.headers.items()}
        parsed: str | list[tuple[str, str]] = url_params
        if form_search:
            assert body is not None, "a POST body was read above"
            parsed = "&".join(p for p in (query, body.decode("utf-8", "replace")) if p)
            body = None
        ix = interactions.parse(request.method, request.path_params.get("path", ""), parsed, headers, body)
        # Binary may be read raw; bulk export files are NDJSON (Accept: application/fhir+ndjson)
        if not (ix.type == "Binary" and ix.kind in (interactions.READ, interactions.VREAD)) \
                and ix.kind != interactions.EXPORT_FILE:
            negotiate(params.get("_format"), request.headers.get("accept"))
        request.scope["state"]["interaction"] = ix.kind
        request.scope["state"]["resource_type"] = ix.type
        ctx = RequestContext(services, base, principal, request.scope["state"]["request_id"])
        result = await dispatch(ctx, ix)
    except FhirError as err:
        result = error_result(err)
    except offload.Overloaded:
        result = error_result(FhirError(503, "transient", "the server is busy; try again shortly",
                                        headers={"Retry-After": "1"}))
    except Exception:
        log.exception("unhandled error")
        result = error_result(FhirError(500, "exception", "internal error; the request id identifies it in the "
                                                          "server logs"))
    finally:
        stack.close()
    return render(result, pretty=pretty)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        await services.ping()
    except Exception:
        return JSONResponse({"status": "database unavailable"}, status_code=503)
    return JSONResponse({"status": "ready", "engine": services.engine.name})


async def metrics(request: Request) -> Response:
    """Prometheus metrics, for the holder of FHIR_METRICS_TOKEN only (request counts by interaction
    and status tell about other users' activity); without a token configured, not served."""
    settings: Settings = request.app.state.services.settings
    expected = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if not expected:
        return JSONResponse({"error": "not_found"}, status_code=404)
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
