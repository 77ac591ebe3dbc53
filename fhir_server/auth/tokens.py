"""Signed JWT access tokens and OpenID Connect id_tokens; validation with caches.

Access token claims: `iss` (the authorization server), `sub` (user name, or client id for backend
services), `aud` (the FHIR base URL), `exp`, `iat`, `jti`, `client_id`, `scope`, and the launch
context: `patient`, `encounter`, `fhirUser`, plus `grant` (the approval it came from, so revoking
a refresh token or a reused code revokes every token of that approval).

Validation cost: a verified token is cached (bounded LRU) until it expires, so a request with a
token already seen costs a dict lookup plus a set lookup for revocation. Revocations are read from
MongoDB at most every `revocation_ttl` seconds per worker (and immediately in the worker that
revoked).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict

from joserfc import jws, jwt
from joserfc.errors import JoseError

from fhir_server.auth.keys import ALG, KeyStore
from fhir_server.auth.stores import StateStore


class InvalidToken(Exception):
    """The bearer token is missing, malformed, expired, revoked or not for us (401)."""


class TokenService:
    def __init__(self, keys: KeyStore, state: StateStore, revocation_ttl: float = 1.0, cache_size: int = 10000):
        self.keys = keys
        self.state = state
        self.revocation_ttl = revocation_ttl
        self._cache: OrderedDict[str, tuple[dict, str]] = OrderedDict()  # token -> (claims, kid)
        self._cache_size = cache_size
        self._revoked: set[str] = set()
        self._revoked_users: dict[str, float] = {}
        self._revoked_at = 0.0

    # --- issuing ---------------------------------------------------------------------------------

    def sign(self, claims: dict, typ: str = "JWT") -> str:
        kid, key = self.keys.current
        return jwt.encode({"alg": ALG, "kid": kid, "typ": typ}, claims, key)

    def access_token(self, *, issuer: str, audience: str, sub: str, client_id: str, scope: str, lifetime: int,
                     grant: str | None = None, context: dict | None = None) -> tuple[str, dict]:
        now = int(time.time())
        claims = {"iss": issuer, "sub": sub, "aud": audience, "iat": now, "exp": now + lifetime,
                  "jti": uuid.uuid4().hex, "client_id": client_id, "scope": scope}
        if grant:
            claims["grant"] = grant
        for name in ("patient", "encounter", "fhirUser", "role", "org", "operator", "purpose_of_use", "btg_reason"):
            if context and context.get(name):
                claims[name] = context[name]
        return self.sign(claims, "at+jwt"), claims

    def id_token(self, *, issuer: str, client_id: str, sub: str, fhir_user: str | None, nonce: str | None,
                 lifetime: int, name: str | None = None) -> str:
        now = int(time.time())
        claims = {"iss": issuer, "sub": sub, "aud": client_id, "iat": now, "exp": now + lifetime,
                  "auth_time": now}
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if nonce:
            claims["nonce"] = nonce
        if name:
            claims["name"] = name
        return self.sign(claims)

    # --- validation ------------------------------------------------------------------------------

    async def _refresh_revocations(self) -> None:
        """Re-read revocations, and the signing keys (a key removed from the store must stop
        validating the tokens it signed, cached ones included), at most every revocation_ttl."""
        now = time.monotonic()
        if now - self._revoked_at > self.revocation_ttl:
            self._revoked, self._revoked_users = await self.state.revocations()
            await self.keys.reload()
            self._revoked_at = now

    def note_revoked(self, key: str) -> None:
        self._revoked.add(key)

    def is_revoked(self, claims: dict) -> bool:
        if "grant" in claims and claims.get("sub") in self._revoked_users:  # a user's token (disabled user)
            if claims.get("iat", 0) <= self._revoked_users[claims["sub"]]:
                return True
        return ("jti:" + claims.get("jti", "")) in self._revoked or (
            "grant" in claims and ("grant:" + claims["grant"]) in self._revoked)

    async def verify(self, token: str, audience: str | None, issuer: str) -> dict:
        """The claims of a valid access token, or InvalidToken. `audience` None skips the aud check
        (introspection answers for any of our tokens)."""
        cached = self._cache.get(token)
        if cached is None:
            cached = await self._verify_signature(token, issuer)
            self._cache[token] = cached
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        claims, kid = cached
        await self._refresh_revocations()
        if self.keys.find(kid) is None:  # its signing key was removed since it was cached
            self._cache.pop(token, None)
            raise InvalidToken("the access token was not signed by a current key")
        if claims["exp"] <= time.time():
            self._cache.pop(token, None)
            raise InvalidToken("the access token has expired")
        if audience is not None and claims.get("aud") != audience:
            raise InvalidToken("the access token is not for this server (aud)")
        if self.is_revoked(claims):
            raise InvalidToken("the access token has been revoked")
        return claims

    async def _verify_signature(self, token: str, issuer: str) -> tuple[dict, str]:
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeEncodeError):
            raise InvalidToken("the access token is malformed") from None
        if header.get("alg") != ALG or header.get("typ") != "at+jwt":
            raise InvalidToken("the access token is malformed")
        kid = str(header.get("kid", ""))
        key = await self.keys.find_or_reload(kid)
        if key is None:
            raise InvalidToken("the access token was not signed by a current key")
        try:
            claims = jwt.decode(token, key, algorithms=[ALG]).claims
        except (JoseError, ValueError):
            raise InvalidToken("the access token's signature is invalid") from None
        if claims.get("iss") != issuer:
            raise InvalidToken("the access token was not issued by this server")
        if not isinstance(claims.get("exp"), int) or not isinstance(claims.get("jti"), str):
            raise InvalidToken("the access token is malformed")
        return claims, kid
