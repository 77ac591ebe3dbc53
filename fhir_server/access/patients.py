"""Which patients a user may open in a standalone launch.

* a patient: their own record only;
* a professional: the patients whose open record authorizes them now (their Consents, through the
  same `ConsentPolicy` that enforces every request: access/consent.py);
* an administrator: every patient.

Emergency access (break-glass) is not a listing: the professional names the patient, who only has
to exist; consent then decides at every request (a block or a refusal of emergency access wins).
"""

from __future__ import annotations

import orjson

from fhir_server.access.consent import ConsentPolicy
from fhir_server.auth.principal import Principal
from fhir_server.fhir.dmp import READ
from fhir_server.fhir.identifiers import RPPS
from fhir_server.search.registry import TOKEN, field_name


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

    def __init__(self, repo, consent: ConsentPolicy, limit: int = 200) -> None:
        self.repo = repo
        self.consent = consent
        self.limit = limit

    async def _authorizing(self, user) -> list[str]:
        principal = Principal(kind="user", subject=user.username, fhir_user=user.fhir_user, role=user.role)
        state = await self.consent.prepare(principal, None, self.repo)  # type: ignore[arg-type]
        if state is None:
            return []
        await self.consent.load(principal, state, "Patient", None)
        return sorted((state.reach or {}).get(READ, ()))[:self.limit]

    async def practitioners_with_rpps(self, rpps: str) -> list[str]:
        """The Practitioners of the directory carrying this RPPS number (one indexed query)."""
        if not rpps:
            return []
        flt = {field_name(TOKEN, "identifier"): f"{RPPS}|{rpps}"}
        return [f"Practitioner/{v.id}" for v, _ in await self.repo.find_page("Practitioner", flt, [("_id", 1)], 2)]

    async def exists(self, patient_id: str) -> bool:
        return bool(patient_id) and await self.repo.read("Patient", patient_id) is not None

    async def accessible(self, user) -> list[tuple[str, str]]:
        if user.role == "patient":
            pid = user.patient_id
            v = await self.repo.read("Patient", pid) if pid else None
            return [(pid, _label(orjson.loads(v.json)))] if v is not None else []
        if user.role == "admin":
            page = await self.repo.find_page("Patient", {}, [("_id", 1)], self.limit)
        else:
            ids = await self._authorizing(user)
            page = await self.repo.find_page("Patient", {"_id": {"$in": ids}}, [("_id", 1)], self.limit) if ids else []
        return [(v.id, _label(orjson.loads(v.json))) for v, _ in page]

    async def may_open(self, user, patient_id: str) -> bool:
        if user.role == "patient":
            return user.patient_id == patient_id
        if user.role == "admin":
            return await self.exists(patient_id)
        return patient_id in await self._authorizing(user)
