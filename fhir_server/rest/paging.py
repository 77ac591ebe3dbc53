"""Opaque keyset cursors for paging links (no skip/offset: pages stay cheap and stable).

A cursor holds a position in a result (sort-key values of the last resource of a page, a total).
It is sealed with AES-GCM under a key shared by every worker (storage/secrets.py) and bound to the
caller who received it: a client can neither read the values it carries nor forge or alter one,
and a link handed to another principal is refused (400) instead of being replayed under its
rights. https://hl7.org/fhir/R4/http.html#paging leaves the link format to the server.
"""

from __future__ import annotations

import base64
import binascii
import os

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fhir_server.auth.principal import Principal
from fhir_server.fhir.outcome import FhirError

_NONCE = 12


def binding(principal: Principal, path: str) -> bytes:
    """What a cursor is bound to: who asked, and for which search or history path."""
    return "\x1f".join((principal.kind, principal.subject or "", principal.client_id or "",
                        principal.patient or "", path)).encode()


def encode_cursor(value: list, key: bytes, bound_to: bytes) -> str:
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(key).encrypt(nonce, orjson.dumps(value), bound_to)
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")


def decode_cursor(token: str, key: bytes, bound_to: bytes) -> list:
    bad = FhirError(400, "value", "the paging cursor is invalid or expired", ["_cursor"])
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if len(raw) <= _NONCE:
            raise bad
        value = orjson.loads(AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], bound_to))
    except (binascii.Error, ValueError, orjson.JSONDecodeError, InvalidTag):
        raise bad from None
    if not isinstance(value, list):
        raise bad
    return value


def page_size(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit():
        raise FhirError(400, "value", f"_count must be a non-negative integer, not '{raw[:20]}'", ["_count"])
    return min(int(raw), maximum)
