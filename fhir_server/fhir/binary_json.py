"""A Binary as FHIR JSON when its content is stored apart (GridFS): the stored JSON with the
base64 `data` spliced in while the content streams, so the whole content is never in memory.
Used by Binary reads in FHIR JSON (rest/handlers/common.py) and bulk export lines
(records/export.py)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator


async def with_data(stored: bytes, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`{...stored..., "data": "<base64 of content>"}`, in pieces (base64 in multiples of 3 bytes)."""
    stored = stored or b"{}"
    yield stored[:-1] + (b',"data":"' if len(stored) > 2 else b'"data":"')
    carry = b""
    async for chunk in content:
        chunk = carry + chunk
        cut = len(chunk) - len(chunk) % 3
        carry = chunk[cut:]
        if cut:
            yield base64.b64encode(chunk[:cut])
    yield base64.b64encode(carry) + b'"}'
