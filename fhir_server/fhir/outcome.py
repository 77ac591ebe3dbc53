"""OperationOutcome errors: the only shape in which a client ever sees a failure.

Every failure is raised as a `FhirError` carrying the HTTP status and the issue; the REST layer
renders it. Spec: https://hl7.org/fhir/R4/operationoutcome.html and
https://hl7.org/fhir/R4/http.html#2.21.0.17 (status codes).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Issue:
    severity: str  # fatal | error | warning | information
    code: str  # http://hl7.org/fhir/issue-type
    diagnostics: str
    expression: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out: dict = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = self.expression
        return out


def operation_outcome(issues: list[Issue]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


class FhirError(Exception):
    """A request failed in a way the client must be told about, with a status and issues."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        expression: list[str] | None = None,
        *,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.issues = issues or [Issue("error", code, diagnostics, expression or [])]
        self.headers = headers or {}

    def outcome(self) -> dict:
        return operation_outcome(self.issues)

    def __reduce__(self):
        """Picklable, so that one raised in a worker process (fhir/offload.py) reaches the request as itself."""
        return _rebuilt_error, (self.status, self.issues, self.headers)


def _rebuilt_error(status: int, issues: list[Issue], headers: dict[str, str]) -> FhirError:
    return FhirError(status, issues[0].code, issues[0].diagnostics, issues=issues, headers=headers)


def not_found(type_: str, id_: str) -> FhirError:
    return FhirError(404, "not-found", f"{type_}/{id_} is not known")


def gone(type_: str, id_: str) -> FhirError:
    return FhirError(410, "deleted", f"{type_}/{id_} has been deleted")


def invalid(diagnostics: str, expression: list[str] | None = None, status: int = 400) -> FhirError:
    return FhirError(status, "invalid", diagnostics, expression)
