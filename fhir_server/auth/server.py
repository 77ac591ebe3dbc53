"""The SMART App Launch 2.2 authorization server, as Starlette routes.

Endpoints (https://hl7.org/fhir/smart-app-launch/):
  GET  /fhir/.well-known/smart-configuration   discovery (always application/json)
  GET  /.well-known/openid-configuration, /auth/.well-known/openid-configuration
  GET  /auth/jwks                              public signing keys
  GET|POST /auth/authorize                     authorization code request (authorize-post)
  POST /auth/login, /auth/approve              the login and app-approval pages' forms
  POST /auth/token                             authorization_code, refresh_token, client_credentials
  POST /auth/introspect                        RFC 7662
  POST /auth/revoke                            RFC 7009

Built on authlib's OAuth 2.0 / PKCE helpers and its JOSE library (joserfc) rather than on
`authlib.oauth2.AuthorizationServer`, whose framework integration is synchronous and
request-object based (docs/decisions.md, "Authorization server").
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Protocol, cast, overload
from urllib.parse import unquote, urlencode, urlsplit

import anyio
import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from fhir_server.auth import audit as authaudit
from fhir_server.auth import pages
from fhir_server.auth.keys import ALG, KeyStore
from fhir_server.auth.scopes import Scope, ScopeError, parse_scope
from fhir_server.auth.stores import (
    Client,
    ClientRegistry,
    MongoClientRegistry,
    MongoUserDirectory,
    StateStore,
    User,
    UserDirectory,
    is_legacy_client_hash,
    new_token,
    utcnow,
    verify_client_secret,
)
from fhir_server.auth.tokens import InvalidToken, TokenService
from fhir_server.fhir import offload

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ["RS384", "ES384"]
CAPABILITIES = [
    "launch-ehr", "launch-standalone", "authorize-post",
    "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
    "sso-openid-connect", "context-ehr-patient", "context-standalone-patient",
    "permission-offline", "permission-online", "permission-patient", "permission-user",
    "permission-v1", "permission-v2",
]
NON_RESOURCE_SCOPES = ["openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                       "offline_access", "online_access"]
SCOPES_SUPPORTED = NON_RESOURCE_SCOPES + [
    "patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.rs", "user/*.rs", "system/*.rs",
    "patient/*.read", "user/*.read", "system/*.read",
]
_VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
FLOW_COOKIE = "fhir_auth_flow"
# Emergency access (break-glass): SMART 2.2 has no parameter for a purpose of use, so this server
# defines one on the authorization request, after IHE IUA's `purpose_of_use` claim, and publishes
# it in .well-known/smart-configuration (`purpose_of_use_parameter`).
PURPOSE_PARAM = "purpose_of_use"
REASON_PARAM = "btg_reason"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
JWKS_TIMEOUT = 5.0  # seconds for a whole client JWKS fetch
JWKS_MAX_BYTES = 64 * 1024
JWKS_FAILURE_SECONDS = 60  # a failed fetch is not retried sooner
log = logging.getLogger("fhir_server.auth")


def fhir_base(request: Request, settings) -> str:
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}/fhir"


def issuer_for(base: str) -> str:
    root = base[: -len("/fhir")] if base.endswith("/fhir") else base
    return root + "/auth"


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400, headers: dict | None = None):
        super().__init__(description)
        self.error, self.description, self.status, self.headers = error, description, status, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "error_description": self.description}, status_code=self.status,
                            headers={**NO_STORE, **self.headers})


def covers(allowed: Scope, requested: Scope) -> bool:
    return (allowed.context == requested.context and allowed.type in ("*", requested.type)
            and requested.perms <= allowed.perms and set(allowed.query) <= set(requested.query))


def allowed_scopes(requested: list[str], client: Client, *, user: User | None, patient: bool) -> list[str]:
    """What may be granted: requested ∩ the client's allowance ∩ what the user's role and the launch
    context make meaningful."""
    allowance = []
    for a in client.scopes:
        try:
            allowance.append(parse_scope(a))
        except ScopeError:
            continue
    out = []
    for word in requested:
        try:
            s = parse_scope(word)
        except ScopeError:
            continue
        if s is None:
            if user is not None and word in client.scopes and word in NON_RESOURCE_SCOPES:
                out.append(word)  # backend services get no user, launch or refresh scopes
            continue
        if user is None and s.context != "system":
            continue
        if user is not None and s.context == "system":
            continue
        if s.context == "patient" and not patient:
            continue
        if any(a is not None and covers(a, s) for a in allowance):
            out.append(word)
    return list(dict.fromkeys(out))


AUTH_ROUTES = [
    ("/fhir/.well-known/smart-configuration", "smart_configuration", ["GET"]),
    ("/.well-known/openid-configuration", "openid_configuration", ["GET"]),
    ("/auth/.well-known/openid-configuration", "openid_configuration", ["GET"]),
    ("/auth/jwks", "jwks", ["GET"]),
    ("/auth/authorize", "authorize", ["GET", "POST"]),
    ("/auth/login", "login", ["POST"]),
    ("/auth/approve", "approve", ["POST"]),
    ("/auth/token", "token", ["POST"]),
    ("/auth/introspect", "introspect", ["POST"]),
    ("/auth/revoke", "revoke", ["POST"]),
]


class PatientPicker(Protocol):
    """Which patients a user may open in a standalone launch. The composition root supplies it
    (fhir_server/access/patients.py), so the authorization server needs no access policy code."""

    async def accessible(self, user: User) -> list[tuple[str, str]]: ...

    async def may_open(self, user: User, patient_id: str) -> bool: ...

    async def exists(self, patient_id: str) -> bool: ...

    async def practitioners_with_rpps(self, rpps: str) -> list[str]: ...


BreakGlassNotice = Callable[[dict], Awaitable[None]]


class AuthServer:
    def __init__(self, settings, db, patients: PatientPicker, users: UserDirectory | None = None,
                 clients: ClientRegistry | None = None, on_break_glass: BreakGlassNotice | None = None,
                 audit: authaudit.AuditSink | None = None) -> None:
        self.settings = settings
        self.patients = patients
        self.on_break_glass = on_break_glass
        self.audit = audit  # where sign-in, token and revocation AuditEvents go (the audit trail)
        self.users = users or MongoUserDirectory(db)
        self.clients = clients or MongoClientRegistry(db)
        self.state = StateStore(db)
        self.keys = KeyStore(db, settings.signing_key_rotation_days)
        self.tokens = TokenService(self.keys, self.state, settings.revocation_cache_seconds)
        self._jwks_cache: dict[str, tuple[float, KeySet | None]] = {}

    async def start(self) -> None:
        await self.keys.ensure_current()
        await self.state.purge_expired()

    # --- audit (auth/audit.py) -------------------------------------------------------------------

    async def _audit(self, event: dict, *, required: bool) -> None:
        """Store one AuditEvent. `required` (a sign-in or a token about to be handed out): if it
        cannot be stored, nothing is handed out (503). Otherwise (a refusal, a revocation already
        done) the failure is logged, without the event's content."""
        if self.audit is None:
            return
        try:
            await self.audit([event])
        except Exception:
            if required:
                raise OAuthError("temporarily_unavailable", "the audit trail cannot be written; nothing was issued. "
                                                            "Try again later", 503, {"Retry-After": "1"}) from None
            log.warning("an authorization event could not be audited", extra={"audit_type": event["subtype"][0]["code"]})

    def _event(self, request: Request, subtype: dict, **kw) -> dict:
        return authaudit.event(subtype, address=request.client.host if request.client else None,
                               server=issuer_for(fhir_base(request, self.settings)), **kw)

    @staticmethod
    def _who(user: User | None, grant: dict | None = None) -> dict | None:
        if grant is not None:
            ctx = grant.get("context") or {}
            return {"username": grant.get("user"), "fhir_user": grant.get("fhir_user"), "name": grant.get("name"),
                    "role": grant.get("role"), "purpose_of_use": ctx.get("purpose_of_use"),
                    "btg_reason": ctx.get("btg_reason")}
        if user is None:
            return None
        return {"username": user.username, "fhir_user": user.fhir_user, "name": user.name, "role": user.role}

    # --- discovery -------------------------------------------------------------------------------

    def _urls(self, request: Request) -> tuple[str, str]:
        base = fhir_base(request, self.settings)
        return base, issuer_for(base)

    async def smart_configuration(self, request: Request) -> Response:
        base, iss = self._urls(request)
        return JSONResponse({
            **_endpoints(iss),
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
            "capabilities": CAPABILITIES,
            "purpose_of_use_parameter": {"name": PURPOSE_PARAM, "values": ["BTG"], "reason_parameter": REASON_PARAM,
                                         "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                         "max_seconds": self.settings.break_glass_seconds},
        }, media_type="application/json")

    async def openid_configuration(self, request: Request) -> Response:
        base, iss = self._urls(request)
        return JSONResponse({
            **_endpoints(iss),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALG],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser", "name"],
        })

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.keys.jwks(), headers={"Cache-Control": "public, max-age=300"})

    # --- authorization endpoint ------------------------------------------------------------------

    async def _params(self, request: Request) -> dict[str, str]:
        if request.method == "POST":
            form = await request.form()
            return {k: v for k, v in form.items() if isinstance(v, str)}
        return dict(request.query_params)

    async def authorize(self, request: Request) -> Response:
        p = await self._params(request)
        base, _ = self._urls(request)
        client = await self.clients.get(p.get("client_id", ""))
        if client is None:
            return HTMLResponse(pages.error_page("Unknown application", "This application is not registered."), 400)
        redirect_uri = p.get("redirect_uri")
        if not redirect_uri or redirect_uri not in client.redirect_uris:
            return HTMLResponse(pages.error_page("Invalid request", "The redirect URI is not registered for this "
                                                                   "application."), 400)
        state = p.get("state")

        def fail(error: str, description: str) -> Response:
            return _redirect(redirect_uri, {"error": error, "error_description": description,
                                            **({"state": state} if state else {})})

        if p.get("response_type") != "code":
            return fail("unsupported_response_type", "response_type must be code")
        if not state:
            return fail("invalid_request", "state is required")
        if p.get("code_challenge_method") != "S256" or not p.get("code_challenge"):
            return fail("invalid_request", "PKCE with code_challenge_method=S256 is required (plain is refused)")
        if p.get("aud", "").rstrip("/") != base:
            return fail("invalid_request", "aud must be this FHIR server's base URL")
        if not p.get("scope"):
            return fail("invalid_scope", "scope is required")
        launch_ctx = None
        if p.get("launch"):
            launch_ctx = await self.state.get_launch(p["launch"])
            if launch_ctx is None:
                return fail("invalid_request", "the launch parameter is unknown or expired")
        params: dict[str, Any] = {
            k: p[k] for k in ("client_id", "redirect_uri", "scope", "state", "code_challenge", "nonce", "aud") if p.get(k)}
        purpose = p.get(PURPOSE_PARAM)
        if purpose:
            if purpose != "BTG":
                return fail("invalid_request", f"{PURPOSE_PARAM} supports BTG (emergency access) only")
            reason = (p.get(REASON_PARAM) or "").strip()
            if not reason or len(reason) > 500:
                return fail("invalid_request", f"emergency access needs a reason ({REASON_PARAM}, at most 500 characters)")
            params["purpose_of_use"] = "BTG"
            params["btg_reason"] = reason
        if launch_ctx is not None:
            params["launch_context"] = {k: launch_ctx[k] for k in ("patient", "encounter", "fhirContext")
                                        if launch_ctx.get(k)}
        rid = await self.state.put_request(params, self.settings.authorization_request_seconds)
        return HTMLResponse(pages.login_page(rid, client.name or client.client_id), headers=NO_STORE)

    async def _pending(self, request: Request, form) -> tuple[str, dict, Client] | Response:
        rid = form.get("rid") or ""
        doc = await self.state.get_request(rid)
        if doc is None:
            return HTMLResponse(pages.error_page("Expired", "This sign-in request has expired; start again from the "
                                                            "application."), 400)
        client = await self.clients.get(doc["params"]["client_id"])
        if client is None:
            return HTMLResponse(pages.error_page("Unknown application", "This application is not registered."), 400)
        return rid, doc, client

    async def login(self, request: Request) -> Response:
        form = await request.form()
        pending = await self._pending(request, form)
        if isinstance(pending, Response):
            return pending
        rid, doc, client = pending
        username = str(form.get("username") or "")[:200]
        password = str(form.get("password") or "")
        window = self.settings.login_throttle_window_seconds
        # one account: `login_max_failures` attempts per window; one address, which a whole hospital
        # may share behind NAT, a much higher budget (docs/decisions.md, "Throttling secrets")
        counted = await self._count_attempts(request, "user:" + username.lower(), self.settings.login_max_failures)
        if counted is None:
            await self._login_failed(request, username, client, "too many failed sign-ins: throttled")
            return HTMLResponse(pages.login_page(rid, client.name or client.client_id,
                                                 "Too many failed attempts. Wait a few minutes and try again.",
                                                 username), 429, headers={**NO_STORE, "Retry-After": str(window)})
        user = await self.users.authenticate(username, password)
        if user is None:
            await self._login_failed(request, username, client, "wrong user name or password, or account disabled")
            return HTMLResponse(pages.login_page(rid, client.name or client.client_id,
                                                 "The user name or password is incorrect.", username), 401,
                                headers=NO_STORE)
        await self.state.forgive(counted[1:])
        await self.state.clear_attempts("user:" + username.lower(), window, self.settings.login_max_failures)
        if user.role == "practitioner":
            linked = await self._link_by_rpps(user)
            if linked is None:
                return HTMLResponse(pages.error_page(
                    "Account not linked", "This professional account's RPPS number does not match its Practitioner "
                                          "in the directory. Ask an administrator."), 403, headers=NO_STORE)
            user.fhir_user = linked
        try:  # a sign-in that cannot be audited does not happen
            await self._audit(self._event(request, authaudit.LOGIN, outcome="0", user=self._who(user),
                                          client_id=client.client_id, patient=user.patient_id), required=True)
        except OAuthError:
            return HTMLResponse(pages.error_page("Unavailable", "Sign-in is unavailable; try again later."), 503,
                                headers={**NO_STORE, "Retry-After": "1"})
        flow = new_token()
        from fhir_server.auth.stores import digest

        await self.state.update_request(rid, {"user": user.username, "flow": digest(flow)})
        response = await self._approval(rid, doc["params"], client, user)
        response.set_cookie(FLOW_COOKIE, flow, max_age=self.settings.authorization_request_seconds, httponly=True,
                            samesite="lax", path="/auth",
                            # behind a TLS-terminating proxy the request itself may be plain http
                            secure=request.url.scheme == "https" or fhir_base(request, self.settings).startswith(
                                "https://"))
        return response

    async def _login_failed(self, request: Request, username: str, client: Client, why: str) -> None:
        """A failed sign-in, audited under the account when it exists (a name typed that is no account
        may be a password typed in the wrong field: it is not recorded)."""
        known = await self.users.get(username) if username else None
        who = self._who(known) if known is not None else {"username": "unknown account"}
        await self._audit(self._event(request, authaudit.LOGIN, outcome="4", user=who, client_id=client.client_id,
                                      description=why), required=False)

    def _needs_picker(self, params: dict, user: User) -> bool:
        words = params["scope"].split()
        return (("launch/patient" in words or bool(params.get("purpose_of_use")))
                and not params.get("launch_context") and user.role != "patient")

    async def _approval(self, rid: str, params: dict, client: Client, user: User, error: str | None = None):
        picker = None
        if self._needs_picker(params, user):
            picker = await self.patients.accessible(user)
        emergency = params.get("btg_reason")
        has_patient = bool(params.get("launch_context", {}).get("patient")) or user.role == "patient" or bool(
            picker) or emergency is not None
        scopes = allowed_scopes(params["scope"].split(), client, user=user, patient=has_patient)
        return HTMLResponse(pages.approve_page(rid, client.name or client.client_id, user.name or user.username,
                                               scopes, picker, error, emergency), headers=NO_STORE)

    async def approve(self, request: Request) -> Response:
        form = await request.form()
        pending = await self._pending(request, form)
        if isinstance(pending, Response):
            return pending
        rid, doc, client = pending
        from fhir_server.auth.stores import digest

        flow = request.cookies.get(FLOW_COOKIE)
        if not doc.get("user") or not flow or digest(flow) != doc.get("flow"):
            return HTMLResponse(pages.error_page("Not signed in", "Sign in again from the application."), 403)
        user = await self.users.get(doc["user"])
        if user is None or user.disabled:
            return HTMLResponse(pages.error_page("Not signed in", "Sign in again from the application."), 403)
        if user.role == "practitioner":
            linked = await self._link_by_rpps(user)
            if linked is None:
                return HTMLResponse(pages.error_page(
                    "Account not linked", "This professional account's RPPS number does not match its Practitioner "
                                          "in the directory. Ask an administrator."), 403)
            user.fhir_user = linked
        params = doc["params"]
        state = params["state"]
        if form.get("decision") != "approve":
            await self.state.drop_request(rid)
            return _redirect(params["redirect_uri"], {"error": "access_denied",
                                                      "error_description": "the user denied access", "state": state})
        context = dict(params.get("launch_context") or {})
        banner = not context  # EHR launch: the EHR shows the patient banner; standalone: the app must
        emergency = params.get("purpose_of_use") == "BTG"
        if emergency and not (user.role == "practitioner" and user.break_glass):
            await self.state.drop_request(rid)
            return _redirect(params["redirect_uri"], {"error": "access_denied", "error_description":
                                                      "this user may not declare emergency access", "state": state})
        if user.role == "patient":
            context["patient"] = user.patient_id  # a patient only ever gets their own record in context
        elif self._needs_picker(params, user):
            chosen = str(form.get("patient") or "")[:64]
            allowed = await (self.patients.exists(chosen) if emergency else self.patients.may_open(user, chosen))
            if not chosen or not allowed:
                return await self._approval(rid, params, client, user, "Choose one of the patients listed."
                                            if not emergency else "No patient record has this id.")
            context["patient"] = chosen
        if emergency:
            if not context.get("patient"):
                return await self._approval(rid, params, client, user, "Emergency access is for one patient.")
            context["purpose_of_use"] = "BTG"
            context["btg_reason"] = params["btg_reason"]
        scopes = allowed_scopes(params["scope"].split(), client, user=user, patient=bool(context.get("patient")))
        if not scopes:
            await self.state.drop_request(rid)
            return _redirect(params["redirect_uri"], {"error": "invalid_scope",
                                                      "error_description": "none of the requested scopes can be "
                                                                           "granted", "state": state})
        grant = {"client_id": client.client_id, "redirect_uri": params["redirect_uri"], "scope": " ".join(scopes),
                 "user": user.username, "fhir_user": user.fhir_user, "name": user.name, "role": user.role,
                 "code_challenge": params["code_challenge"], "nonce": params.get("nonce"),
                 "context": context, "need_patient_banner": banner, "grant": uuid.uuid4().hex}
        code = await self.state.put_code(grant, self.settings.authorization_code_seconds)
        await self.state.drop_request(rid)
        response = _redirect(params["redirect_uri"], {"code": code, "state": state})
        response.delete_cookie(FLOW_COOKIE, path="/auth")
        return response

    async def _link_by_rpps(self, user: User) -> str | None:
        """The Practitioner a professional account acts as: the one in the directory carrying its RPPS
        number. An account naming another Practitioner is refused; with none in the directory yet,
        the account's own link stands."""
        found = await self.patients.practitioners_with_rpps(user.rpps or "")
        if len(found) > 1:
            return None  # two directory entries claim one RPPS: ambiguous, refuse
        if found:
            return found[0] if user.fhir_user in (None, found[0]) else None
        return user.fhir_user

    # --- client authentication -------------------------------------------------------------------

    @overload
    async def _authenticate_client(self, request: Request, form, *, required: Literal[True]) -> Client: ...

    @overload
    async def _authenticate_client(self, request: Request, form, *, required: bool) -> Client | None: ...

    async def _authenticate_client(self, request: Request, form, *, required: bool) -> Client | None:
        """The client making a token/introspection/revocation request, per its registered kind."""
        token_url = issuer_for(fhir_base(request, self.settings)) + "/token"
        auth = request.headers.get("authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                raise OAuthError("invalid_client", "malformed Basic credentials", 401,
                                 {"WWW-Authenticate": 'Basic realm="fhir-auth"'})
            return await self._check_secret(request, unquote(cid), unquote(secret))
        if form.get("client_assertion_type") or form.get("client_assertion"):
            if form.get("client_assertion_type") != JWT_BEARER:
                raise OAuthError("invalid_client", "client_assertion_type must be " + JWT_BEARER, 401)
            return await self._check_assertion(str(form.get("client_assertion") or ""), token_url,
                                               form.get("client_id"))
        if form.get("client_secret"):
            return await self._check_secret(request, str(form.get("client_id") or ""), str(form["client_secret"]))
        cid = form.get("client_id")
        if not cid:
            if required:
                raise OAuthError("invalid_client", "client authentication is required", 401)
            return None
        client = await self.clients.get(str(cid))
        if client is None:
            raise OAuthError("invalid_client", "unknown client", 401)
        if client.confidential:
            raise OAuthError("invalid_client", "this client must authenticate", 401)
        return client

    async def _count_attempts(self, request: Request, key: str, limit: int) -> list[str] | None:
        """Count one secret check against `key` (an account or a client id, `limit` per window) and
        against the caller's address (`address_max_attempts`), before checking anything: None when
        either is over its budget, else the counters' ids (to forgive a right secret)."""
        window = self.settings.login_throttle_window_seconds
        address = "ip:" + (request.client.host if request.client else "-")
        key_slot = await self.state.count_attempt(key, window, limit)
        address_slot = await self.state.count_attempt(address, window, self.settings.address_max_attempts)
        if key_slot is None or address_slot is None:
            return None
        return [key_slot, address_slot]

    async def _check_secret(self, request: Request, cid: str, secret: str) -> Client:
        failed = OAuthError("invalid_client", "client authentication failed", 401,
                            {"WWW-Authenticate": 'Basic realm="fhir-auth"'})
        counted = await self._count_attempts(request, "client:" + cid[:200], self.settings.client_max_failures)
        if counted is None:
            raise OAuthError("invalid_client", "too many failed client authentications; try again later", 429,
                             {"Retry-After": str(self.settings.login_throttle_window_seconds)})
        client = await self.clients.get(cid)
        stored = client.secret_hash if client is not None and client.kind == "confidential-symmetric" else None
        # the same work whether or not the client exists (no client-id enumeration by timing)
        try:
            ok = await verify_client_secret(stored, secret)
        except offload.Overloaded:  # a legacy argon2 hash, and the hashing lane is full
            raise OAuthError("temporarily_unavailable", "the server is busy; try again shortly", 503,
                             {"Retry-After": "1"})
        if not ok or client is None or stored is None:
            raise failed
        if is_legacy_client_hash(stored):  # verified the slow way once: kept the current way from now on
            await self.clients.store_secret(cid, secret, stored)
        await self.state.forgive(counted)
        return client

    async def _client_keys(self, client: Client) -> KeySet:
        if client.jwks:
            return KeySet.import_key_set(cast(KeySetSerialization, client.jwks))  # a JWKS, checked on import
        jwks_uri = client.jwks_uri
        assert jwks_uri is not None, "a client registered for private_key_jwt has a JWKS or a JWKS URL"
        cached = self._jwks_cache.get(jwks_uri)
        if cached and cached[0] > time.monotonic():
            if cached[1] is None:
                raise ValueError("the client's JWKS could not be fetched recently")
            return cached[1]
        if not jwks_uri.startswith("https://") and not self.settings.development:
            raise ValueError("the client's jwks_uri must be https")
        try:
            keys = await self._fetch_jwks(jwks_uri)
        except (httpx.HTTPError, ValueError, JoseError):
            self._jwks_cache[jwks_uri] = (time.monotonic() + JWKS_FAILURE_SECONDS, None)  # failures are cached too
            raise ValueError("the client's JWKS could not be fetched")
        self._jwks_cache[jwks_uri] = (time.monotonic() + 300, keys)
        return keys

    @staticmethod
    async def _fetch_jwks(jwks_uri: str) -> KeySet:
        """GET a client's JWKS: no redirects, at most JWKS_MAX_BYTES, JWKS_TIMEOUT seconds in all."""
        with anyio.fail_after(JWKS_TIMEOUT):
            async with httpx.AsyncClient(timeout=JWKS_TIMEOUT, follow_redirects=False) as http:
                async with http.stream("GET", jwks_uri, headers={"Accept": "application/json"}) as r:
                    r.raise_for_status()
                    body = b""
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) > JWKS_MAX_BYTES:
                            raise ValueError("the JWKS is too large")
        return KeySet.import_key_set(json.loads(body))

    async def _check_assertion(self, assertion: str, token_url: str, form_client_id) -> Client:
        """private_key_jwt (SMART Backend Services, RFC 7523): RS384/ES384, iss = sub = client_id,
        aud = the token URL, exp at most 5 minutes ahead, jti never seen before."""
        def bad(why: str) -> OAuthError:
            return OAuthError("invalid_client", why, 401)

        try:
            obj = jws.extract_compact(assertion.encode("ascii"))
            header, unverified = obj.headers(), json.loads(obj.payload)
        except Exception:
            raise OAuthError("invalid_client", "the client assertion is not a JWT", 400)
        if not isinstance(header, dict) or not isinstance(unverified, dict):
            raise OAuthError("invalid_client", "the client assertion's header and payload must be JSON objects", 400)
        if header.get("alg") not in ASSERTION_ALGS:
            raise bad("the client assertion must be signed with RS384 or ES384")
        cid = unverified.get("iss")
        if not isinstance(cid, str) or unverified.get("sub") != cid or (form_client_id and form_client_id != cid):
            raise bad("the client assertion's iss and sub must both be the client id")
        client = await self.clients.get(cid)
        if client is None or client.kind != "confidential-asymmetric":
            raise bad("unknown client, or not registered for private_key_jwt")
        try:
            keys = await self._client_keys(client)
            claims = jwt.decode(assertion, keys, algorithms=ASSERTION_ALGS).claims
        except ValueError as exc:
            if "jwks" in str(exc).lower():
                raise bad(str(exc))
            raise bad("the client assertion's signature does not verify with the client's registered keys")
        except (JoseError, KeyError, TypeError, httpx.HTTPError):
            raise bad("the client assertion's signature does not verify with the client's registered keys")
        aud = claims.get("aud")
        if not (aud == token_url or (isinstance(aud, list) and token_url in aud)):
            raise bad("the client assertion's aud must be the token endpoint URL")
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= now:
            raise bad("the client assertion has expired")
        if exp > now + 300 + 5:  # 5 s clock skew
            raise bad("the client assertion's exp must be at most five minutes in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise bad("the client assertion needs a jti")
        if not await self.state.first_use_of_jti(f"{cid}:{jti}", datetime.fromtimestamp(exp, timezone.utc)):
            raise bad("this client assertion has already been used (jti replay)")
        return client

    # --- token endpoint --------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        form = await request.form()
        try:
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                body = await self._code_grant(request, form)
            elif grant_type == "refresh_token":
                body = await self._refresh_grant(request, form)
            elif grant_type == "client_credentials":
                body = await self._client_credentials(request, form)
            else:
                raise OAuthError("unsupported_grant_type", "grant_type must be authorization_code, refresh_token or "
                                                           "client_credentials")
        except OAuthError as err:
            if err.status != 503:  # a refused token request (an audit failure was not a refusal)
                cid = form.get("client_id")
                await self._audit(self._event(
                    request, authaudit.GET_ACCESS_TOKEN, outcome="4", user=None,
                    client_id=cid[:200] if isinstance(cid, str) else None,
                    description=f"{err.error}: {err.description}", entities=[authaudit.token_request(form)]),
                    required=False)
            return err.response()
        return JSONResponse(body, headers=NO_STORE)

    async def _code_grant(self, request: Request, form) -> dict:
        client = await self._authenticate_client(request, form, required=True)
        grant, reused = await self.state.take_code(str(form.get("code") or ""))
        if reused and grant is not None:
            await self._revoke_grant(grant["grant"])
            raise OAuthError("invalid_grant", "the authorization code has already been used; tokens issued from it "
                                              "are revoked")
        if grant is None:
            raise OAuthError("invalid_grant", "the authorization code is invalid or expired")
        if grant["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "the authorization code was issued to another client")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
        verifier = str(form.get("code_verifier") or "")
        if not _VERIFIER_RE.fullmatch(verifier) or create_s256_code_challenge(verifier) != grant["code_challenge"]:
            raise OAuthError("invalid_grant", "the PKCE code_verifier does not match the code_challenge")
        user = await self.users.get(grant["user"])
        if user is None or user.disabled:
            raise OAuthError("invalid_grant", "the user's account is disabled")
        return await self._issue(request, form, client, grant, refresh=True)

    async def _refresh_grant(self, request: Request, form) -> dict:
        client = await self._authenticate_client(request, form, required=True)
        old, reused = await self.state.take_refresh(str(form.get("refresh_token") or ""))
        if reused and old is not None:
            await self._revoke_grant(old["grant"])
            raise OAuthError("invalid_grant", "the refresh token was already used; the whole grant is revoked")
        if old is None:
            raise OAuthError("invalid_grant", "the refresh token is invalid, expired or revoked")
        if old["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        await self.tokens._refresh_revocations()
        if ("grant:" + old["grant"]) in self.tokens._revoked:
            raise OAuthError("invalid_grant", "the grant has been revoked")
        grant = dict(old)
        if form.get("scope"):
            wanted = str(form["scope"]).split()
            if not set(wanted) <= set(old["scope"].split()):
                raise OAuthError("invalid_scope", "a refresh may only narrow the granted scopes")
            grant["scope"] = " ".join(wanted)
        user = await self.users.get(grant["user"])
        if user is None or user.disabled:
            raise OAuthError("invalid_grant", "the user's account is disabled")
        return await self._issue(request, form, client, grant, refresh=True, refresh_exp=old["exp"])

    async def _client_credentials(self, request: Request, form) -> dict:
        client = await self._authenticate_client(request, form, required=True)
        if client.kind != "confidential-asymmetric":
            raise OAuthError("unauthorized_client", "client_credentials needs a client registered for private_key_jwt")
        if form.get(PURPOSE_PARAM):
            raise OAuthError("invalid_request", "a backend client cannot declare emergency access (break-glass is a "
                                                "professional's, for one patient)")
        scopes = allowed_scopes(str(form.get("scope") or "").split(), client, user=None, patient=False)
        if not scopes:
            raise OAuthError("invalid_scope", "none of the requested scopes can be granted to this client")
        base, iss = self._urls(request)
        lifetime = min(self.settings.backend_token_seconds, 300)
        acting = {"org": client.organization, "operator": client.operator}
        token, claims = self.tokens.access_token(issuer=iss, audience=base, sub=client.client_id,
                                                 client_id=client.client_id, scope=" ".join(scopes), lifetime=lifetime,
                                                 context=acting)
        await self._audit(self._event(request, authaudit.GET_ACCESS_TOKEN, outcome="0", user=None,
                                      client_id=client.client_id, entities=[
                                          authaudit.token_request(form), authaudit.token_response(claims["jti"], {
                                              "grant_type": "client_credentials", "scope": " ".join(scopes),
                                              "expires_in": str(lifetime)})]), required=True)
        return {"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": " ".join(scopes)}

    async def _issue(self, request: Request, form, client: Client, grant: dict, *, refresh: bool,
                     refresh_exp: datetime | None = None) -> dict:
        base, iss = self._urls(request)
        scopes = grant["scope"].split()
        context = grant.get("context") or {}
        token_ctx = {"patient": context.get("patient"), "encounter": context.get("encounter"),
                     "fhirUser": grant.get("fhir_user"), "role": grant.get("role"),
                     "purpose_of_use": context.get("purpose_of_use"), "btg_reason": context.get("btg_reason")}
        lifetime = self.settings.access_token_seconds
        emergency = context.get("purpose_of_use") == "BTG"
        if emergency:  # bounded: no refresh, and no longer than the configured emergency window
            lifetime = min(lifetime, self.settings.break_glass_seconds)
            refresh = False
            if self.on_break_glass is not None:  # traced, and the patient is told, before the token exists
                await self.on_break_glass({"patient": context.get("patient"), "user": grant.get("user"),
                                           "fhir_user": grant.get("fhir_user"), "name": grant.get("name"),
                                           "client_id": client.client_id, "reason": context.get("btg_reason"),
                                           "seconds": lifetime})
        token, claims = self.tokens.access_token(issuer=iss, audience=base, sub=grant["user"],
                                                 client_id=client.client_id, scope=grant["scope"], lifetime=lifetime,
                                                 grant=grant["grant"], context=token_ctx)
        refreshes = refresh and ("offline_access" in scopes or "online_access" in scopes)
        # audited before anything is handed out or stored: no audit, no token (503)
        await self._audit(self._event(
            request, authaudit.GET_ACCESS_TOKEN, outcome="0", user=self._who(None, grant), client_id=client.client_id,
            patient=context.get("patient"), entities=[authaudit.token_request(form), authaudit.token_response(
                claims["jti"], {"grant_type": str(form.get("grant_type")), "scope": grant["scope"],
                                "expires_in": str(lifetime), "refresh_token": "issued" if refreshes else "",
                                "grant": grant["grant"]})]), required=True)
        body: dict = {"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": grant["scope"]}
        if context.get("patient") and (emergency or any(s.startswith(("patient/", "launch")) for s in scopes)):
            body["patient"] = context["patient"]
        if context.get("encounter"):
            body["encounter"] = context["encounter"]
        fhir_context = list(context.get("fhirContext") or [])
        if context.get("encounter"):
            fhir_context.append({"reference": "Encounter/" + context["encounter"]})
        if fhir_context:
            body["fhirContext"] = fhir_context
        if "patient" in body:
            body["need_patient_banner"] = bool(grant.get("need_patient_banner"))
        if "openid" in scopes and ("fhirUser" in scopes or "profile" in scopes):
            fhir_user = grant.get("fhir_user")
            body["id_token"] = self.tokens.id_token(
                issuer=iss, client_id=client.client_id, sub=grant["user"],
                fhir_user=(base + "/" + fhir_user) if fhir_user and "fhirUser" in scopes else None,
                nonce=grant.get("nonce"), lifetime=lifetime,
                name=grant.get("name") if "profile" in scopes else None)
        if refreshes:
            if refresh_exp is None:
                seconds = (self.settings.offline_refresh_seconds if "offline_access" in scopes
                           else self.settings.online_refresh_seconds)
                refresh_lifetime = seconds
            else:
                refresh_lifetime = max(1, int((refresh_exp.replace(tzinfo=refresh_exp.tzinfo or timezone.utc)
                                               - utcnow()).total_seconds()))
            keep = {k: grant.get(k) for k in ("client_id", "scope", "user", "fhir_user", "name", "role", "context",
                                               "need_patient_banner", "grant")}
            body["refresh_token"] = await self.state.put_refresh(keep, refresh_lifetime)
        return body

    async def _revoke_grant(self, grant_id: str) -> None:
        until = utcnow() + timedelta(seconds=max(self.settings.offline_refresh_seconds,
                                                 self.settings.access_token_seconds))
        await self.state.revoke_grant(grant_id, until)
        self.tokens.note_revoked("grant:" + grant_id)

    # --- introspection and revocation ------------------------------------------------------------

    async def introspect(self, request: Request) -> Response:
        form = await request.form()
        try:  # RFC 7662 §2.1: a confidential client, or a resource server's own backend-services token
            client = await self._authenticate_client(request, form, required=False)
            if client is None:
                await self._bearer_caller(request)
            elif not client.confidential:
                raise OAuthError("invalid_client", "introspection needs a confidential client's credentials", 401)
        except OAuthError as err:
            return err.response()
        token = str(form.get("token") or "")
        _, iss = self._urls(request)
        try:
            claims = await self.tokens.verify(token, None, iss)
        except InvalidToken:
            rt = await self.state.find_refresh(token)
            await self.tokens._refresh_revocations()
            if rt is None or ("grant:" + rt["grant"]) in self.tokens._revoked:
                return JSONResponse({"active": False}, headers=NO_STORE)
            ctx = rt.get("context") or {}
            body = {"active": True, "token_type": "refresh_token", "client_id": rt["client_id"], "scope": rt["scope"],
                    "exp": int(rt["exp"].timestamp()), "sub": rt["user"], "iss": iss}
            if ctx.get("patient"):
                body["patient"] = ctx["patient"]
            return JSONResponse(body, headers=NO_STORE)
        body = {"active": True, "token_type": "Bearer", "scope": claims["scope"], "client_id": claims["client_id"],
                "exp": claims["exp"], "iat": claims["iat"], "sub": claims["sub"], "iss": claims["iss"],
                "aud": claims["aud"]}
        for name in ("patient", "encounter"):
            if claims.get(name):
                body[name] = claims[name]
        if claims.get("fhirUser"):
            body["fhirUser"] = claims["aud"] + "/" + claims["fhirUser"]
        return JSONResponse(body, headers=NO_STORE)

    async def _bearer_caller(self, request: Request) -> dict:
        """Introspection by a resource server holding a token of its own."""
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() != "bearer ":
            raise OAuthError("invalid_client", "introspection needs client authentication or a bearer token", 401)
        try:
            claims = await self.tokens.verify(auth[7:].strip(), None, self._urls(request)[1])
        except InvalidToken as exc:
            raise OAuthError("invalid_token", str(exc), 401)
        if claims.get("grant") or claims.get("sub") != claims.get("client_id"):
            # an app's token acts for a user: it must not scan other tokens
            raise OAuthError("invalid_client", "introspection needs a resource server's backend-services token", 401)
        return claims

    async def revoke(self, request: Request) -> Response:
        form = await request.form()
        try:
            client = await self._authenticate_client(request, form, required=True)
        except OAuthError as err:
            return err.response()
        token = str(form.get("token") or "")
        rt = await self.state.find_refresh(token)
        if rt is not None:
            if rt["client_id"] == client.client_id:
                await self._revoke_grant(rt["grant"])
                await self._audit(self._event(request, authaudit.LOGOUT, outcome="0", user=self._who(None, rt),
                                              client_id=client.client_id, patient=(rt.get("context") or {}).get("patient"),
                                              description="refresh token revoked: its grant ended",
                                              entities=[authaudit.revoked("grant:" + rt["grant"])]), required=False)
            return Response(status_code=200, headers=NO_STORE)
        try:
            claims = await self.tokens.verify(token, None, self._urls(request)[1])
        except InvalidToken:
            return Response(status_code=200, headers=NO_STORE)  # RFC 7009 §2.2: invalid tokens are not an error
        if claims.get("client_id") == client.client_id:
            key = "jti:" + claims["jti"]
            await self.state.revoke(key, datetime.fromtimestamp(claims["exp"], timezone.utc))
            self.tokens.note_revoked(key)
            user = None if claims.get("sub") == claims.get("client_id") else {
                "username": claims.get("sub"), "fhir_user": claims.get("fhirUser"), "role": claims.get("role")}
            await self._audit(self._event(request, authaudit.LOGOUT, outcome="0", user=user, client_id=client.client_id,
                                          patient=claims.get("patient"), description="access token revoked",
                                          entities=[authaudit.revoked(key)]), required=False)
        return Response(status_code=200, headers=NO_STORE)


def _redirect(uri: str, params: dict) -> RedirectResponse:
    sep = "&" if urlsplit(uri).query else "?"
    return RedirectResponse(uri + sep + urlencode(params), status_code=302, headers=NO_STORE)


def _endpoints(iss: str) -> dict:
    """What SMART's smart-configuration and OpenID's discovery document say alike."""
    return {
        "issuer": iss,
        "jwks_uri": iss + "/jwks",
        "authorization_endpoint": iss + "/authorize",
        "token_endpoint": iss + "/token",
        "introspection_endpoint": iss + "/introspect",
        "revocation_endpoint": iss + "/revoke",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }
