"""Which patients a user may open in a standalone launch.

* a patient: their own record only;
* a professional: the patients whose `Patient.generalPractitioner` names their Practitioner (or a
  PractitionerRole of theirs is not resolved yet). Patient consents (IHE PCF) will widen or narrow
  this when the consent policy lands; it is the one place to change;
* an administrator: every patient.

The professional's list is one indexed query on the `general-practitioner` search parameter's
reference field, capped at `limit`.
"""

from __future__ import annotations

import orjson

from fhir_server.search.normalize import reference_key
from fhir_server.search.registry import REFERENCE, field_name


def _label(resource: dict) -> str:
    names = resource.get("name") or []
    text = ""
    if names and isinstance(names[0], dict):
        n = names[0]
        text = n.get("text") or " ".join([*(n.get("given") or []), n.get("family") or ""]).strip()
    birth = resource.get("birthDate")
    return f"{text or 'Patient'}" + (f", born {birth}" if birth else "") + f" ({resource.get('id')})"


class PatientPicker:
    """The standalone-launch patient picker's rules, over the repository (no HTTP, no scopes)."""

    def __init__(self, repo, limit: int = 200) -> None:
        self.repo = repo
        self.limit = limit

    async def accessible(self, user) -> list[tuple[str, str]]:
        if user.role == "patient":
            pid = user.patient_id
            v = await self.repo.read("Patient", pid) if pid else None
            return [(pid, _label(orjson.loads(v.json)))] if v is not None else []
        flt = {} if user.role == "admin" else {field_name(REFERENCE, "general-practitioner"): user.fhir_user or ""}
        page = await self.repo.find_page("Patient", flt, [("_id", 1)], self.limit)
        return [(v.id, _label(orjson.loads(v.json))) for v, _ in page]

    async def may_open(self, user, patient_id: str) -> bool:
        if user.role == "patient":
            return user.patient_id == patient_id
        v = await self.repo.read("Patient", patient_id)
        if v is None:
            return False
        if user.role == "admin":
            return True
        resource = orjson.loads(v.json)
        return any(reference_key(g.get("reference") or "") == user.fhir_user
                   for g in resource.get("generalPractitioner") or () if isinstance(g, dict))
