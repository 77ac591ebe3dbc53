"""Who is asking: the authenticated caller of one request, as the access decision sees it.

Built from a verified access token (auth/bearer.py) and never from request content. It lives in
`auth` (below `access` and `rest`) because both the decision point and the HTTP layer need it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.auth.scopes import ScopeSet


@dataclass(frozen=True, slots=True, eq=False)
class Principal:
    """A user (patient, professional, admin) through a client, or a backend client on its own,
    with the token's scopes and launch context."""

    kind: str = "anonymous"  # anonymous | user | client | developer (insecure dev mode only)
    subject: str | None = None  # the user id (sub), or the client id for backend services
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    patient: str | None = None  # launch context patient id
    purpose_of_use: tuple[str, ...] = ()  # e.g. ("TREAT",), ("BTG",): from the token
    fhir_user: str | None = None  # e.g. "Practitioner/123" or "Patient/456"
    encounter: str | None = None
    unrestricted: bool = False  # only the insecure-dev-mode principal
    role: str | None = None  # a user's role: patient | practitioner | admin
    organization: str | None = None  # a backend client's Organization ("Organization/<id>")
    operator: bool = False  # a backend client registered as an operator service (not bound by consent)
    btg_reason: str | None = None  # the reason given when break-glass (purpose BTG) was declared
    grants: ScopeSet | None = None  # parsed scopes (built from `scopes` when not given)

    def __post_init__(self) -> None:
        if self.grants is None:
            object.__setattr__(self, "grants", ScopeSet.parse(self.scopes, self.patient, self.user_patient))

    @property
    def user_patient(self) -> str | None:
        """The Patient id when the user is a patient (fhirUser = Patient/x)."""
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user[len("Patient/"):]
        return None

    @property
    def break_glass(self) -> bool:
        """Emergency access was declared for the patient in context (IHE IUA purpose of use BTG)."""
        return "BTG" in self.purpose_of_use and self.patient is not None

    @property
    def scope_set(self) -> ScopeSet:
        assert self.grants is not None  # set in __post_init__
        return self.grants


ANONYMOUS = Principal()
DEVELOPER = Principal(kind="developer", subject="insecure-dev-mode", unrestricted=True)


def purpose_of_use(claims: dict) -> tuple[str, ...]:
    """The token's purpose of use (IHE IUA `purpose_of_use`, a code or a list of codes), if any."""
    value = claims.get("purpose_of_use")
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()
