"""Request ids, structured logs and Prometheus metrics, as one pure-ASGI middleware.

Logs carry the request id, method, interaction kind, resource type, status and duration; never
the path's ids, query strings, bodies or tokens (they may carry patient data or secrets).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid

from prometheus_client import Counter, Histogram

REQUEST_ID = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")

REQUESTS = Counter("fhir_requests_total", "HTTP requests", ["method", "interaction", "status"])
LATENCY = Histogram(
    "fhir_request_seconds", "HTTP request latency", ["interaction"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

log = logging.getLogger("fhir_server.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage(), "request_id": REQUEST_ID.get()}
        for key in ("method", "interaction", "type", "status", "duration_ms"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = _bounded(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = _bounded(record.exc_text)
        return json.dumps(out, ensure_ascii=False)


MAX_TRACEBACK = 4000  # characters of a traceback kept in one log line (a deep recursion is 100+ KB)


def _bounded(text: str) -> str:
    if len(text) <= MAX_TRACEBACK:
        return text
    half = MAX_TRACEBACK // 2
    return f"{text[:half]}\n… {len(text) - MAX_TRACEBACK} characters left out …\n{text[-half:]}"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers (start-up, protocol errors, exceptions it catches) go through the same
    # JSON handler: no plain-text lines or tracebacks beside the JSON log
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    for noisy in ("uvicorn.access",):  # its lines carry full paths and query strings
        logging.getLogger(noisy).disabled = True


class ObservabilityMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _VALID_ID.fullmatch(candidate) else None
                break
        rid = rid or uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status_holder = [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            state = scope.get("state", {})
            kind = state.get("interaction", "other")
            REQUESTS.labels(scope["method"], kind, str(status_holder[0])).inc()
            LATENCY.labels(kind).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info("request", extra={"method": scope["method"], "interaction": kind,
                                           "type": state.get("resource_type"), "status": status_holder[0],
                                           "duration_ms": round(elapsed * 1000, 2)})
            REQUEST_ID.reset(token)
