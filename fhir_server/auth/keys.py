"""Signing keys for access tokens and id_tokens: persisted in MongoDB, rotated, published as JWKS.

Keys live in `auth_signing_keys` (`_id` = kid, the private JWK, `created`). The newest key signs;
the JWKS publishes the newest `PUBLISHED` keys, so tokens signed before a rotation stay valid until
they expire. A key older than the rotation period is replaced at start-up or on the next
`ensure_current` call. Several workers may rotate at once: each inserts its own key and signs with
the newest it knows; a worker meeting another's kid reads that key by id (`find_or_reload`).

Keys are RSA 2048 with RS256, which every OpenID Connect relying party must support
(OpenID Connect Core §15.1). Not encrypted at rest yet: protect the database.
"""

from __future__ import annotations

import time
from datetime import timedelta

from joserfc import jwk

from fhir_server.auth.stores import new_token, utcnow

ALG = "RS256"
PUBLISHED = 2  # current + previous


class KeyStore:
    def __init__(self, db, rotation_days: int = 30) -> None:
        self.col = db["auth_signing_keys"]
        self.rotation = timedelta(days=rotation_days)
        self._keys: list[tuple[str, jwk.RSAKey]] = []  # newest first
        self._loaded_at = 0.0
        self._unknown: dict[str, float] = {}  # kids found nowhere -> until when to trust that

    async def load(self) -> None:
        docs = [d async for d in self.col.find({}, sort=[("created", -1)], limit=PUBLISHED)]
        # importing an RSA private key checks it (milliseconds of CPU on the event loop): only new
        # kids are imported; a kid's key never changes (rotation makes a new kid)
        known = dict(self._keys)
        self._keys = [(d["_id"], known.get(d["_id"]) or jwk.RSAKey.import_key(d["jwk"])) for d in docs]
        self._loaded_at = time.monotonic()

    async def reload(self) -> None:
        """Re-read the keys (another process rotated or removed one); a store left empty gets a new key."""
        await self.load()
        if not self._keys:
            await self.rotate()

    async def ensure_current(self) -> None:
        """Load the keys; create the first one, or rotate when the newest is too old."""
        await self.load()
        newest = await self.col.find_one({}, sort=[("created", -1)])
        if newest is None or newest["created"].replace(tzinfo=newest["created"].tzinfo or utcnow().tzinfo) \
                < utcnow() - self.rotation:
            await self.rotate()

    async def rotate(self) -> str:
        kid = new_token(12)
        key = jwk.RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": ALG}, private=True)
        await self.col.insert_one({"_id": kid, "jwk": key.as_dict(private=True), "created": utcnow()})
        await self.load()
        return kid

    @property
    def current(self) -> tuple[str, jwk.RSAKey]:
        return self._keys[0]

    def find(self, kid: str) -> jwk.RSAKey | None:
        for k, key in self._keys:
            if k == kid:
                return key
        return None

    async def find_or_reload(self, kid: str) -> jwk.RSAKey | None:
        """A key by kid. An unknown kid may be another worker's newer key (workers starting together
        on a fresh database each create one, and rotations happen anywhere): it is looked up by its
        `_id`, one indexed read, and a kid found nowhere is remembered for a while so that tokens
        with made-up kids cost one lookup each, not one per request."""
        key = self.find(kid)
        if key is not None:
            return key
        now = time.monotonic()
        if self._unknown.get(kid, 0.0) > now:
            return None
        doc = await self.col.find_one({"_id": kid})
        if doc is None or doc["created"].replace(tzinfo=doc["created"].tzinfo or utcnow().tzinfo) \
                < utcnow() - 2 * self.rotation:
            if len(self._unknown) > 10000:
                self._unknown.clear()
            self._unknown[kid] = now + 60.0
            return None
        await self.load()
        return self.find(kid) or jwk.RSAKey.import_key(doc["jwk"])

    def jwks(self) -> dict:
        keys = []
        for kid, key in self._keys:
            public = key.as_dict(private=False)
            public.update({"kid": kid, "use": "sig", "alg": ALG})
            keys.append(public)
        return {"keys": keys}
