"""The data of a patient's access history (`Patient/{id}/$access-history`, issue 10 item 5): one
page of the record's AuditEvents, newest first, and what a reader needs to understand them — the
names of the people, applications and organizations that acted, and which documents they touched.

The DMP leaflet promises the patient "l'historique des actions effectuées dans votre DMP : qui l'a
consulté, quand et pour quoi faire". The AuditEvents (records/audit.py) hold references; this
module resolves them, and only through the caller's own rights:

* the events are an ordinary AuditEvent search (`patient=…`, `_sort=-date`, keyset paged), so the
  access filter applies (the patient's compartment; auditors see all; professionals are refused
  by access/audit_readers.py);
* a Practitioner, PractitionerRole or Organization is named only if the caller may read it;
* a document is described (title, type) only if the caller may read it *as it is now and in the
  version the event names* (vread's rule): a document hidden from the patient until the
  announcement consultation shows no title to the patient, only that a document was touched.

Everything resolved is reported to the hooks as disclosed, so the access history is itself audited
with what it showed. Nothing here knows HTTP or languages (rest/handlers/access_history.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from fhir_server.access.decision import Effect
from fhir_server.fhir.identifiers import IDNPS, RPPS
from fhir_server.fhir.outcome import not_found
from fhir_server.search import mongo
from fhir_server.search.parse import parse
from fhir_server.storage.documents import Version

if TYPE_CHECKING:
    from fhir_server.records.records import Records

AUDIT = "AuditEvent"
DIRECTORY = ("Practitioner", "PractitionerRole", "Organization")
MAX_ROLES = 10  # PractitionerRoles looked at per practitioner (their organizations)


@dataclass(slots=True)
class Party:
    """Someone who acted: a person or an organization, as the caller may know them."""

    name: str | None = None
    identifier: dict | None = None  # the professional's national id (IDNPS, else RPPS)
    organizations: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Document:
    """A document an event names, if the caller may read it."""

    title: str | None
    type: dict | None  # the document's type (CodeableConcept)


@dataclass(slots=True)
class AccessHistoryPage:
    events: list[tuple[Version, dict]]
    next_position: list | None
    parties: dict[str, Party]  # reference -> who
    documents: dict[str, Document | None]  # versioned reference -> the document, or None: not shown


def _name(resource: dict) -> str | None:
    if resource.get("resourceType") == "Organization":
        return resource.get("name") if isinstance(resource.get("name"), str) else None
    for n in resource.get("name") or ():
        if not isinstance(n, dict):
            continue
        if isinstance(n.get("text"), str):
            return n["text"]
        parts = [*(g for g in n.get("given") or () if isinstance(g, str)), n.get("family")]
        text = " ".join(p for p in parts if isinstance(p, str) and p)
        if text:
            return text
    return None


def _national_id(resource: dict) -> dict | None:
    ids = [i for i in resource.get("identifier") or () if isinstance(i, dict) and isinstance(i.get("value"), str)]
    for system in (IDNPS, RPPS):
        for i in ids:
            if i.get("system") == system:
                return {"system": system, "value": i["value"]}
    return None


def _title(doc: dict) -> str | None:
    for content in doc.get("content") or ():
        title = ((content or {}).get("attachment") or {}).get("title") if isinstance(content, dict) else None
        if isinstance(title, str) and title:
            return title
    return doc.get("description") if isinstance(doc.get("description"), str) else None


class _Resolver:
    def __init__(self, records: Records) -> None:
        self.records = records
        self.disclosed: list[Version] = []
        self.seen: dict[tuple[str, str], dict | None] = {}

    async def peek(self, rtype: str, rid: str) -> dict | None:
        """The current resource if the caller may read it (None otherwise; never an error)."""
        key = (rtype, rid)
        if key in self.seen:
            return self.seen[key]
        access = self.records.access
        found = None
        if rtype in self.records.types and access.decide("r", rtype).effect is not Effect.DENY:
            v = await self.records.repo.read(rtype, rid, unit=self.records.unit_)
            if v is not None and v.json is not None and await access.may_read("r", rtype, v.json):
                found = orjson.loads(v.json)
                self.disclosed.append(v)
        self.seen[key] = found
        return found

    async def party(self, ref: str) -> Party | None:
        rtype, _, rid = ref.partition("/")
        resource = await self.peek(rtype, rid) if rtype in (*DIRECTORY, "Patient") and rid else None
        if resource is None:
            return None
        out = Party(_name(resource), _national_id(resource) if rtype == "Practitioner" else None)
        orgs: list[str] = []
        if rtype == "PractitionerRole":
            practitioner = ((resource.get("practitioner") or {}).get("reference") or "").partition("/")
            who = await self.peek("Practitioner", practitioner[2]) if practitioner[0] == "Practitioner" else None
            if who is not None:
                out.name, out.identifier = _name(who) or out.name, _national_id(who)
            orgs.append((resource.get("organization") or {}).get("reference") or "")
        elif rtype == "Practitioner":
            orgs += await self._organizations_of(ref)
        elif rtype == "Organization":
            return out
        for org_ref in orgs:
            otype, _, oid = org_ref.partition("/")
            org = await self.peek("Organization", oid) if otype == "Organization" and oid else None
            if org is not None and _name(org) and _name(org) not in out.organizations:
                out.organizations.append(_name(org) or "")
        return out

    async def _organizations_of(self, practitioner: str) -> list[str]:
        access = self.records.access
        if access.decide("s", "PractitionerRole").effect is Effect.DENY:
            return []
        roles = await self.records.matching("PractitionerRole", parse("PractitionerRole", [
            ("practitioner", practitioner)]), MAX_ROLES)
        out = []
        for v in roles:
            role = orjson.loads(v.json or b"{}")
            self.seen[("PractitionerRole", v.id)] = role
            out.append((role.get("organization") or {}).get("reference") or "")
        return out

    async def document(self, ref: str) -> Document | None:
        """A versioned reference `Type/id/_history/v` to a document (None: the caller may not see it)."""
        parts = ref.split("/")
        if len(parts) != 4 or parts[2] != "_history" or not parts[3].isdigit() or parts[0] not in self.records.types:
            return None
        rtype, rid, vid = parts[0], parts[1], int(parts[3])
        if self.records.access.decide("r", rtype).effect is Effect.DENY:
            return None
        now, _ = await self.records._last_content(rtype, rid)
        then = await self.records.repo.vread(rtype, rid, vid, unit=self.records.unit_)
        if not (await self.records._sees("r", now) and await self.records._sees("r", then)):
            return None  # e.g. hidden from the patient until the announcement consultation
        assert then is not None and then.json is not None
        self.disclosed.append(then)
        doc = orjson.loads(then.json)
        if rtype != "DocumentReference":
            return Document(None, None)
        return Document(_title(doc), doc.get("type") if isinstance(doc.get("type"), dict) else None)


async def run(records: Records, patient: str, *, count: int, after: list | None) -> AccessHistoryPage:
    """One page of `patient`'s access history, newest first (`after`: the keyset position)."""
    if records.access.decide("r", "Patient").effect is not Effect.DENY:
        if await records._latest("r", "Patient", patient) is None:
            raise not_found("Patient", patient)  # not the caller's to see: as if it did not exist
    query = parse(AUDIT, [("patient", f"Patient/{patient}"), ("_sort", "-date")])
    page = await records.search(AUDIT, query, compartment=None, sort=mongo.sort_spec(query), count=count,
                                after=after, want_total=False)
    resolver = _Resolver(records)
    events = [(v, orjson.loads(v.json or b"{}")) for v in page.matches]
    parties: dict[str, Party] = {}
    documents: dict[str, Document | None] = {}
    for _, event in events:
        for agent in event.get("agent") or ():
            who = (agent or {}).get("who") or {}
            for ref in (who.get("reference"), who.get("display")):
                if isinstance(ref, str) and ref not in parties and ref.partition("/")[0] in (*DIRECTORY, "Patient"):
                    found = await resolver.party(ref)
                    if found is not None:
                        parties[ref] = found
        for entity in event.get("entity") or ():
            ref = ((entity or {}).get("what") or {}).get("reference")
            if isinstance(ref, str) and "/_history/" in ref and ref not in documents:
                documents[ref] = await resolver.document(ref)
    await records._disclose(resolver.disclosed)
    return AccessHistoryPage(events, page.next_position, parties, documents)
