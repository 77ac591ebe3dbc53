"""What the authorization server keeps, in MongoDB collections prefixed `auth_`.

* users (`auth_users`) and clients (`auth_clients`) behind small interfaces (`UserDirectory`,
  `ClientRegistry`), so an external OpenID provider or a client registry can replace them;
* short-lived state: pending authorization requests, authorization codes, launch contexts,
  refresh tokens, revocations, client-assertion `jti`s seen, login failures.

Secrets are never stored in clear: passwords are argon2id hashes; client secrets, codes and
refresh tokens, all random and long, are stored under their SHA-256 (client secrets salted; see
`hash_client_secret` for why no slow hash). Expiry is checked on every read (no reliance on TTL
indexes, which not every engine we run on honours); `purge_expired` sweeps old rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from fhir_server.fhir import offload
from fhir_server.fhir.identifiers import rpps_problem

ROLES = ("patient", "practitioner", "admin")
CLIENT_KINDS = ("public", "confidential-symmetric", "confidential-asymmetric")

# argon2id (RFC 9106 second recommended option: 64 MiB, t=3, p=4)
_hasher = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4)


_dummy_hash: list[str] = []


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(stored_hash: str | None, secret: str) -> bool:
    """Constant work: an unknown account or client is checked against a dummy hash of the same
    parameters, so the time taken does not tell whether the name exists."""
    if not stored_hash:
        if not _dummy_hash:
            _dummy_hash.append(_hasher.hash(secrets.token_urlsafe(16)))
        stored_hash = _dummy_hash[0]
        known = False
    else:
        known = True
    try:
        return _hasher.verify(stored_hash, secret) and known
    except (VerificationError, InvalidHashError):
        return False


async def verify_secret_off_loop(stored_hash: str | None, secret: str) -> bool:
    """`verify_secret` on the CPU pool (argon2 takes tens of milliseconds; it releases the GIL)."""
    return await offload.run(verify_secret, stored_hash, secret, hashing=True)


# A client secret is a machine credential, drawn at random by the server (`fhir-server clients add`
# prints 32 random bytes) and at least CLIENT_SECRET_MIN_LENGTH characters when an operator brings
# one. A slow hash exists to make guessing a low-entropy *password* from its stolen hash costly;
# against 192 random bits guessing is out of reach whatever the hash, so client secrets are kept
# as a salted SHA-256, like codes and refresh tokens (NIST SP 800-63B §5.1.1.2 asks a slow
# derivation of memorized secrets only; RFC 6819 §5.1.4.1.3, §5.1.4.2.2). argon2 there cost every
# token request of a symmetric client ~200 ms of CPU and 64 MiB, and let anyone make the server
# spend that per request with a made-up client id (issue 12; bench/hostile.py).
CLIENT_SECRET_MIN_LENGTH = 32
_CLIENT_HASH_PREFIX = "sha256$"
_LEGACY_CLIENT_HASH_PREFIX = "$argon2"  # client secrets stored before salted SHA-256


def hash_client_secret(secret: str) -> str:
    """`sha256$<salt>$<hex digest>`"""
    salt = secrets.token_hex(16)
    return f"{_CLIENT_HASH_PREFIX}{salt}${_client_digest(salt, secret)}"


def _client_digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}\n{secret}".encode()).hexdigest()


_DUMMY_CLIENT_SALT = secrets.token_hex(16)
_DUMMY_CLIENT_DIGEST = _client_digest(_DUMMY_CLIENT_SALT, secrets.token_urlsafe(32))


def is_legacy_client_hash(stored_hash: str | None) -> bool:
    return stored_hash is not None and stored_hash.startswith(_LEGACY_CLIENT_HASH_PREFIX)


async def verify_client_secret(stored_hash: str | None, secret: str) -> bool:
    """Whether `secret` is the client's. The same work whether the client exists or not (an
    unknown or public client is checked against a dummy digest), so the time taken does not tell
    whether a client id exists; the comparison is constant-time. A legacy argon2 hash is verified
    with argon2, off the loop (the caller then stores the secret again: `hash_client_secret`)."""
    if is_legacy_client_hash(stored_hash):
        return await verify_secret_off_loop(stored_hash, secret)
    salt, expected, known = _DUMMY_CLIENT_SALT, _DUMMY_CLIENT_DIGEST, False
    if stored_hash and stored_hash.startswith(_CLIENT_HASH_PREFIX):
        parts = stored_hash[len(_CLIENT_HASH_PREFIX):].split("$")
        if len(parts) == 2:
            (salt, expected), known = parts, True
    return hmac.compare_digest(_client_digest(salt, secret), expected) and known


def disable_revocation_until(settings) -> datetime:
    """How long a disabled user's revocation must last: as long as any token issued to them."""
    return utcnow() + timedelta(seconds=max(settings.access_token_seconds, settings.offline_refresh_seconds,
                                            settings.online_refresh_seconds) + 60)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def _slot_id(prefix: str, slot: int) -> str:
    return f"{prefix}{slot:09d}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --- users ---------------------------------------------------------------------------------------

@dataclass
class User:
    username: str
    role: str  # patient | practitioner | admin
    fhir_user: str | None = None  # "Patient/<id>" for patients, "Practitioner/<id>" for professionals
    name: str = ""
    rpps: str | None = None  # 11-digit RPPS number of a professional
    disabled: bool = False
    break_glass: bool = False  # a professional allowed to declare emergency access (purpose BTG)

    @property
    def patient_id(self) -> str | None:
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.split("/", 1)[1]
        return None


class UserDirectory(Protocol):
    """Who may log in. The built-in one is MongoDB; an external OpenID provider can replace it."""

    async def authenticate(self, username: str, password: str) -> User | None: ...

    async def get(self, username: str) -> User | None: ...


class MongoUserDirectory:
    def __init__(self, db) -> None:
        self.col = db["auth_users"]

    @staticmethod
    def _user(doc: dict) -> User:
        return User(doc["_id"], doc["role"], doc.get("fhir_user"), doc.get("name", ""), doc.get("rpps"),
                    bool(doc.get("disabled")), bool(doc.get("break_glass")))

    async def add(self, user: User, password: str) -> None:
        if user.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if user.role == "patient" and not (user.fhir_user or "").startswith("Patient/"):
            raise ValueError("a patient account is linked to a Patient resource (--fhir-user Patient/<id>)")
        if user.role == "practitioner":
            if user.fhir_user is not None and not user.fhir_user.startswith("Practitioner/"):
                raise ValueError("a professional account is linked to a Practitioner (--fhir-user Practitioner/<id>, "
                                 "or found by its RPPS number at sign-in)")
            problem = rpps_problem(user.rpps or "")
            if problem:
                raise ValueError(f"a professional account needs a valid RPPS number (--rpps): {problem}")
        if user.break_glass and user.role != "practitioner":
            raise ValueError("only professionals may be allowed to declare emergency access")
        if len(password) < 8:
            raise ValueError("passwords have at least 8 characters")
        doc = {"_id": user.username, **{k: v for k, v in asdict(user).items() if k != "username"},
               "password": hash_secret(password), "created": utcnow()}
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            raise ValueError(f"user '{user.username}' already exists") from None

    async def get(self, username: str) -> User | None:
        doc = await self.col.find_one({"_id": username})
        return self._user(doc) if doc else None

    async def authenticate(self, username: str, password: str) -> User | None:
        doc = await self.col.find_one({"_id": username})
        ok = await verify_secret_off_loop(doc.get("password") if doc else None, password)
        if not ok or doc is None or doc.get("disabled"):
            return None
        return self._user(doc)

    async def unlink_patient(self, patient: str) -> list[str]:
        """After the patient's record was destroyed: their accounts stay (a person may open a new
        record later) but no longer name the Patient; returns the user names unlinked."""
        ref = f"Patient/{patient}"
        names = [d["_id"] async for d in self.col.find({"fhir_user": ref}, projection={"_id": 1})]
        if names:
            await self.col.update_many({"fhir_user": ref}, {"$unset": {"fhir_user": ""}})
        return names

    async def list(self) -> list[User]:
        return [self._user(d) async for d in self.col.find({}, sort=[("_id", 1)])]

    async def set_disabled(self, username: str, disabled: bool = True) -> bool:
        r = await self.col.update_one({"_id": username}, {"$set": {"disabled": disabled}})
        return r.matched_count == 1


# --- clients -------------------------------------------------------------------------------------

@dataclass
class Client:
    client_id: str
    kind: str  # public | confidential-symmetric | confidential-asymmetric
    name: str = ""
    redirect_uris: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)  # the most this client may be granted
    secret_hash: str | None = None
    jwks: dict | None = None
    jwks_uri: str | None = None
    organization: str | None = None  # "Organization/<id>" a backend client acts for (consent applies to it)
    operator: bool = False  # an operator service: not bound by patient consent (every access is audited)

    @property
    def confidential(self) -> bool:
        return self.kind != "public"


class ClientRegistry(Protocol):
    async def get(self, client_id: str) -> Client | None: ...

    async def store_secret(self, client_id: str, secret: str, replacing: str) -> None: ...


class MongoClientRegistry:
    def __init__(self, db) -> None:
        self.col = db["auth_clients"]

    @staticmethod
    def _client(doc: dict) -> Client:
        return Client(doc["_id"], doc["kind"], doc.get("name", ""), list(doc.get("redirect_uris") or []),
                      list(doc.get("scopes") or []), doc.get("secret_hash"), doc.get("jwks"), doc.get("jwks_uri"),
                      doc.get("organization"), bool(doc.get("operator")))

    async def add(self, client: Client, secret: str | None = None) -> None:
        if client.kind not in CLIENT_KINDS:
            raise ValueError(f"client kind must be one of {', '.join(CLIENT_KINDS)}")
        if client.kind == "confidential-symmetric" and not secret:
            raise ValueError("a confidential-symmetric client needs a secret")
        if secret and len(secret) < CLIENT_SECRET_MIN_LENGTH:
            raise ValueError(f"a client secret has at least {CLIENT_SECRET_MIN_LENGTH} random characters "
                             "(leave it out to get one drawn at random)")
        if client.kind == "confidential-asymmetric" and not (client.jwks or client.jwks_uri):
            raise ValueError("a confidential-asymmetric client needs a JWKS or a JWKS URL")
        if client.kind != "confidential-asymmetric" and not client.redirect_uris:
            raise ValueError("an app needs at least one redirect URI")
        if client.organization is not None and not (client.organization.startswith("Organization/")
                                                    and client.organization.count("/") == 1):
            raise ValueError("a client's organization is a reference Organization/<id>")
        for uri in client.redirect_uris:
            if "#" in uri or not uri.startswith(("https://", "http://")):
                raise ValueError(f"redirect URI '{uri}' must be an absolute http(s) URL without a fragment")
        doc = {"_id": client.client_id, **{k: v for k, v in asdict(client).items() if k != "client_id"},
               "created": utcnow()}
        if secret:
            doc["secret_hash"] = hash_client_secret(secret)
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError:
            raise ValueError(f"client '{client.client_id}' already exists") from None

    async def get(self, client_id: str) -> Client | None:
        doc = await self.col.find_one({"_id": client_id})
        return self._client(doc) if doc else None

    async def list(self) -> list[Client]:
        return [self._client(d) async for d in self.col.find({}, sort=[("_id", 1)])]

    async def remove(self, client_id: str) -> bool:
        return (await self.col.delete_one({"_id": client_id})).deleted_count == 1

    async def store_secret(self, client_id: str, secret: str, replacing: str) -> None:
        """Keep `secret` in the current form, in place of the hash `replacing` (only if that is
        still the stored one: a secret changed meanwhile stays changed)."""
        await self.col.update_one({"_id": client_id, "secret_hash": replacing},
                                  {"$set": {"secret_hash": hash_client_secret(secret)}})


# --- short-lived state ---------------------------------------------------------------------------

class StateStore:
    """Pending authorizations, codes, launch contexts, refresh tokens, revocations, jtis, throttling."""

    def __init__(self, db) -> None:
        self.requests = db["auth_requests"]
        self.codes = db["auth_codes"]
        self.launches = db["auth_launches"]
        self.refresh = db["auth_refresh_tokens"]
        self.revoked = db["auth_revocations"]
        self.jtis = db["auth_assertion_jtis"]
        self.failures = db["auth_login_failures"]
        self._next_slot: dict[str, int] = {}  # key|window| -> the slot this process tries next

    # pending authorization requests (between /authorize and the redirect)
    async def put_request(self, params: dict, lifetime: int) -> str:
        rid = new_token()
        await self.requests.insert_one({"_id": digest(rid), "params": params, "exp": utcnow() + timedelta(
            seconds=lifetime)})
        return rid

    async def get_request(self, rid: str) -> dict | None:
        doc = await self.requests.find_one({"_id": digest(rid or "")})
        if doc is None or _aware(doc["exp"]) < utcnow():
            return None
        return doc

    async def update_request(self, rid: str, fields: dict) -> None:
        await self.requests.update_one({"_id": digest(rid)}, {"$set": fields})

    async def drop_request(self, rid: str) -> None:
        await self.requests.delete_one({"_id": digest(rid)})

    # authorization codes: single use
    async def put_code(self, grant: dict, lifetime: int) -> str:
        code = new_token()
        await self.codes.insert_one({"_id": digest(code), **grant, "used": False,
                                     "exp": utcnow() + timedelta(seconds=lifetime)})
        return code

    async def take_code(self, code: str) -> tuple[dict | None, bool]:
        """(grant, reused): marks the code used atomically; a second use returns reused=True."""
        doc = await self.codes.find_one_and_update({"_id": digest(code or ""), "used": False},
                                                   {"$set": {"used": True}}, return_document=ReturnDocument.BEFORE)
        if doc is None:
            old = await self.codes.find_one({"_id": digest(code or "")})
            return (old, True) if old is not None else (None, False)
        if _aware(doc["exp"]) < utcnow():
            return None, False
        return doc, False

    # EHR launch contexts
    async def put_launch(self, context: dict, lifetime: int = 3600) -> str:
        launch = new_token(16)
        await self.launches.insert_one({"_id": launch, **context, "exp": utcnow() + timedelta(seconds=lifetime)})
        return launch

    async def get_launch(self, launch: str) -> dict | None:
        doc = await self.launches.find_one({"_id": launch or ""})
        if doc is None or _aware(doc["exp"]) < utcnow():
            return None
        return doc

    # refresh tokens: rotated on every use; reuse of a rotated one revokes the whole grant
    async def put_refresh(self, grant: dict, lifetime: int) -> str:
        token = new_token()
        await self.refresh.insert_one({"_id": digest(token), **grant, "used": False,
                                       "exp": utcnow() + timedelta(seconds=lifetime)})
        return token

    async def take_refresh(self, token: str) -> tuple[dict | None, bool]:
        doc = await self.refresh.find_one_and_update({"_id": digest(token or ""), "used": False},
                                                     {"$set": {"used": True}}, return_document=ReturnDocument.BEFORE)
        if doc is None:
            old = await self.refresh.find_one({"_id": digest(token or "")})
            return (old, True) if old is not None else (None, False)
        if _aware(doc["exp"]) < utcnow():
            return None, False
        return doc, False

    async def find_refresh(self, token: str) -> dict | None:
        doc = await self.refresh.find_one({"_id": digest(token or "")})
        if doc is None or doc.get("used") or _aware(doc["exp"]) < utcnow():
            return None
        return doc

    # revocation: of one access token (jti) or of a whole grant (every token issued from one approval)
    async def revoke(self, key: str, exp: datetime) -> None:
        await self.revoked.update_one({"_id": key}, {"$set": {"exp": exp}}, upsert=True)

    async def revoke_grant(self, grant_id: str, until: datetime) -> None:
        await self.revoke("grant:" + grant_id, until)
        await self.refresh.update_many({"grant": grant_id}, {"$set": {"used": True}})

    async def revoked_keys(self) -> set[str]:
        return (await self.revocations())[0]

    async def revocations(self) -> tuple[set[str], dict[str, float]]:
        """(revoked jti:/grant: keys, user name -> every token of theirs issued at or before this epoch
        second is revoked)."""
        keys: set[str] = set()
        subjects: dict[str, float] = {}
        async for d in self.revoked.find({"exp": {"$gt": utcnow()}}, projection={"_id": 1, "before": 1}):
            if d["_id"].startswith("sub:"):
                subjects[d["_id"][4:]] = float(d.get("before", 0))
            else:
                keys.add(d["_id"])
        return keys, subjects

    async def revoke_user(self, username: str, until: datetime) -> None:
        """Every token issued to `username` so far: access tokens (by their iat) and refresh tokens."""
        await self.revoked.update_one({"_id": "sub:" + username},
                                      {"$set": {"exp": until, "before": utcnow().timestamp()}}, upsert=True)
        await self.refresh.update_many({"user": username}, {"$set": {"used": True}})

    # client assertion replay protection
    async def first_use_of_jti(self, key: str, exp: datetime) -> bool:
        try:
            await self.jtis.insert_one({"_id": key, "exp": exp})
            return True
        except DuplicateKeyError:
            return False

    # throttling of everything that checks a secret (sign-in, client secrets)
    #
    # Each attempt reserves a slot: a document `key|window|slot` (slot 0 .. limit-1) inserted under
    # its unique _id, before the secret is checked, so parallel guesses cannot all pass a check made
    # before any was counted; however many processes count, a window holds at most `limit`
    # reservations, because each slot id exists once. A unique insert is atomic on every engine; a
    # `$inc` is not on FerretDB v1 (40 concurrent find_one_and_update $inc left the counter at 3:
    # docs/mongodb-compat.md). Every operation here is an `_id` equality, which every engine serves by
    # its `_id` index: a range or a count over `_id` is a scan of the whole collection on FerretDB,
    # and the collection holds one document per attempt of every key, so under a guessing flood
    # each attempt cost more than the one before (bench/client_secret.py).
    #
    # Where to insert: the slot after this process's last one for the key (`_next_slot`), slot 0
    # for a key new here (one insert per attempt), or when that one is taken, a free slot found by a
    # binary search on existence (log2(limit) lookups). The last slot taken means the budget is
    # spent (one lookup per refused attempt). A slot given back (`forgive`) is reused by the process
    # that gave it back, as a request reserves and gives back in one process; a hole below a taken
    # last slot is not reused by the others, which makes the limit at most slightly stricter, never
    # looser.
    NEXT_SLOT_KEYS = 10_000  # keys remembered per process (an attacker's made-up ids cannot grow it)

    async def count_attempt(self, key: str, window: int, limit: int) -> str | None:
        """Reserve one of the `limit` attempts of `key` in the current fixed window: the slot's id,
        or None when all are taken."""
        now = utcnow()
        prefix = f"{key}|{int(now.timestamp()) // window}|"
        hint = self._next_slot.get(prefix, 0)  # a key new here: most often new everywhere
        slot = hint if hint < limit else await self._free_slot(prefix, 0, limit)
        exp = now + timedelta(seconds=2 * window)
        while slot is not None:
            try:
                await self.failures.insert_one({"_id": _slot_id(prefix, slot), "exp": exp})
            except DuplicateKeyError:  # taken by a concurrent attempt or another process
                slot = await self._free_slot(prefix, slot + 1, limit)
                continue
            if len(self._next_slot) >= self.NEXT_SLOT_KEYS:
                self._next_slot.clear()  # only costs the next attempts of each key a search
            self._next_slot[prefix] = slot + 1
            return _slot_id(prefix, slot)
        self._next_slot[prefix] = limit
        return None

    async def _slot_taken(self, prefix: str, slot: int) -> bool:
        return await self.failures.find_one({"_id": _slot_id(prefix, slot)}, projection={"_id": 1}) is not None

    async def _free_slot(self, prefix: str, lo: int, limit: int) -> int | None:
        """None when the last slot (limit-1) is taken: the budget is spent. Else a free slot from
        `lo` up whose lower neighbours are taken, as far as a binary search sees."""
        if lo >= limit or await self._slot_taken(prefix, limit - 1):
            return None
        hi = limit - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if await self._slot_taken(prefix, mid):
                lo = mid + 1
            else:
                hi = mid
        return hi

    async def forgive(self, slot_ids: list[str]) -> None:
        """Give back the slots of attempts whose secret was right."""
        for sid in slot_ids:
            await self.failures.delete_one({"_id": sid})
            prefix, _, slot = sid.rpartition("|")
            prefix += "|"
            if prefix in self._next_slot and slot.isdigit():
                self._next_slot[prefix] = min(self._next_slot[prefix], int(slot))

    async def clear_attempts(self, key: str, window: int, limit: int) -> None:
        """Forget the failures of `key` in this window and the previous one (a right password)."""
        bucket = int(utcnow().timestamp()) // window
        for b in (bucket, bucket - 1):
            prefix = f"{key}|{b}|"
            self._next_slot.pop(prefix, None)
            for first in range(0, limit, 32):  # a few in flight at once, whatever the limit
                await asyncio.gather(*(self.failures.delete_one({"_id": _slot_id(prefix, slot)})
                                       for slot in range(first, min(limit, first + 32))))

    async def forget_patient(self, patient: str) -> None:
        """Drop every pending authorization, code, launch context and refresh token that names this
        patient (their record was destroyed): they would keep the patient's id and could be used to
        reach a later record under the same id."""
        ref = f"Patient/{patient}"
        await self.requests.delete_many({"params.launch_context.patient": patient})
        for col in (self.codes, self.refresh):
            await col.delete_many({"$or": [{"context.patient": patient}, {"fhir_user": ref}]})
        await self.launches.delete_many({"patient": patient})

    async def purge_expired(self) -> None:
        now = utcnow()
        for col in (self.requests, self.codes, self.launches, self.refresh, self.revoked, self.jtis, self.failures):
            await col.delete_many({"exp": {"$lt": now}})
