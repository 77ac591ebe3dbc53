"""Opaque keyset cursors for paging links (no skip/offset: pages stay cheap and stable)."""

from __future__ import annotations

import base64
import binascii

import orjson

from fhir_server.fhir.outcome import FhirError


def encode_cursor(value: list) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode("ascii").rstrip("=")


def decode_cursor(token: str) -> list:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise FhirError(400, "value", "the paging cursor is invalid or expired")
    if not isinstance(value, list):
        raise FhirError(400, "value", "the paging cursor is invalid or expired")
    return value


def page_size(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit():
        raise FhirError(400, "value", f"_count must be a non-negative integer, not '{raw[:20]}'", ["_count"])
    return min(int(raw), maximum)
