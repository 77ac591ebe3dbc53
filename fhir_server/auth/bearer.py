"""Bearer token → Principal, for every FHIR request (RFC 6750).

Missing, malformed, expired, revoked or foreign tokens are 401 with `WWW-Authenticate: Bearer`.
Without a token, only a server started with FHIR_INSECURE_DEV_MODE=true answers, with the
unrestricted developer principal; a token, when present, is always validated and enforced.
"""

from __future__ import annotations

from collections import OrderedDict

from fhir_server.auth.principal import DEVELOPER, Principal, purpose_of_use
from fhir_server.auth.server import issuer_for
from fhir_server.auth.tokens import InvalidToken
from fhir_server.fhir.outcome import FhirError

_principals: OrderedDict[str, Principal] = OrderedDict()
_MAX = 10000


def _challenge(base: str, error: str | None = None, description: str | None = None) -> dict:
    value = f'Bearer realm="{base}"'
    if error:
        value += f', error="{error}"'
    if description:
        value += f', error_description="{description}"'
    return {"WWW-Authenticate": value}


def unauthorized(base: str, message: str, error: str | None = "invalid_token") -> FhirError:
    return FhirError(401, "login", message, headers=_challenge(base, error, message if error else None))


def principal_from_claims(claims: dict) -> Principal:
    p = _principals.get(claims["jti"])
    if p is None:
        p = Principal(
            kind="user" if "grant" in claims else "client",
            subject=claims.get("sub"),
            client_id=claims.get("client_id"),
            scopes=frozenset(claims.get("scope", "").split()),
            patient=claims.get("patient"),
            purpose_of_use=purpose_of_use(claims),
            fhir_user=claims.get("fhirUser"),
            encounter=claims.get("encounter"),
            role=claims.get("role"),
            organization=claims.get("org"),
            operator=claims.get("operator") is True,
            btg_reason=claims.get("btg_reason"),
        )
        _principals[claims["jti"]] = p
        if len(_principals) > _MAX:
            _principals.popitem(last=False)
    return p


async def authenticate(authorization: str | None, base: str, services) -> Principal:
    if not authorization:
        if services.settings.insecure_dev_mode:
            return DEVELOPER
        raise unauthorized(base, "an access token is required (Authorization: Bearer …)", None)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized(base, "the Authorization header must carry a Bearer token", "invalid_request")
    try:
        claims = await services.auth.tokens.verify(token.strip(), base, issuer_for(base))
    except InvalidToken as exc:
        raise unauthorized(base, str(exc)) from None
    return principal_from_claims(claims)
