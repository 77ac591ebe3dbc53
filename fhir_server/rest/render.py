"""Turn a Result into an HTTP response: FHIR JSON (optionally pretty), raw Binary, or a stream."""

from __future__ import annotations

import orjson
from starlette.responses import Response, StreamingResponse

from fhir_server.rest.formats import FHIR_JSON
from fhir_server.rest.result import Result

CONTENT_TYPE = f"{FHIR_JSON}; charset=utf-8"


def render(result: Result, *, pretty: bool, head: bool = False) -> Response:
    headers = result.headers
    if result.stream is not None:
        media = result.media_type or CONTENT_TYPE
        return StreamingResponse(result.stream, status_code=result.status, headers=headers, media_type=media)
    if result.status in (204, 304):
        return Response(status_code=result.status, headers=headers)
    if result.raw is not None:
        body = result.raw if not pretty else orjson.dumps(orjson.loads(result.raw), option=orjson.OPT_INDENT_2)
    elif result.resource is not None:
        body = orjson.dumps(result.resource, option=orjson.OPT_INDENT_2 if pretty else 0)
    else:
        body = b""
    return Response(body, status_code=result.status, headers=headers, media_type=CONTENT_TYPE if body else None)
