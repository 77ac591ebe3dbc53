"""A deterministic French dataset for the search benchmark (bench/search.py), addressable by index.

Every resource is a pure function of (kind, index): ids are UUID-shaped hashes of "kind:index", and
each resource's random choices come from `random.Random(f"{seed}:{kind}:{index}")`. That lets the
benchmark grow one database from 10k to 100k to 1M DocumentReferences by writing only the new
indexes, and lets the query side rebuild any patient (its INS, names) without reading the database.

Proportions for `docs` DocumentReferences (all multiples of BLOCK = 1000):
* patients: docs / 10 (PATIENTS_PER_BLOCK per block of 1000 documents; a document's subject is a
  random patient of its own block, so every patient has ~10 documents, Poisson-like spread);
* practitioners (RPPS): max(50, docs / 200); a document's author is one of those that exist once
  its block is loaded;
* AuditEvents: docs / 5 (AUDIT_PER_BLOCK per block), each about one patient of that block (entity
  what = Patient and DocumentReference, agent who = Practitioner), `recorded` over the same 5 years.

Patients reuse bench/dataset.py (INS-NIR under urn:oid:1.2.250.1.213.1.4.8, accented names, ...).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from datetime import datetime, timedelta, timezone

import dataset as base  # bench/dataset.py (the CRUD benchmark's generator): patients, practitioners

BLOCK = 1000
PATIENTS_PER_BLOCK = 100
AUDIT_PER_BLOCK = 200
SEED = 2026
LOINC = "http://loinc.org"
# (LOINC code, display, weight): the document types a French hospital EHR exchanges most
DOC_TYPES = [
    ("11488-4", "Consultation note", 30),
    ("18842-5", "Discharge summary", 15),
    ("11502-2", "Laboratory report", 25),
    ("34117-2", "History and physical note", 8),
    ("18748-4", "Diagnostic imaging study", 12),
    ("57833-6", "Prescription for medication", 10),
]
_TYPE_WEIGHTS = [w for *_, w in DOC_TYPES]
# document class (XDS classCode as used by the French DMP; codes of the TRE_A03 nomenclature)
CLASS_SYSTEM = "urn:oid:1.2.250.1.213.1.1.4.1"
CATEGORY_OF = {
    "11488-4": ("10", "Compte rendu"), "18842-5": ("10", "Compte rendu"), "34117-2": ("10", "Compte rendu"),
    "11502-2": ("11", "Résultat d'examen"), "18748-4": ("12", "Imagerie médicale"),
    "57833-6": ("13", "Prescription"),
}
FACILITY = [("SA01", "Établissement public de santé"), ("SA07", "Centre hospitalier universitaire"),
            ("SA05", "Centre de santé"), ("SA29", "Laboratoire de biologie médicale")]
FACILITY_SYSTEM = "urn:oid:1.2.250.1.213.1.1.4.9"
DATE_START = datetime(2021, 1, 1, tzinfo=timezone.utc)
DATE_SPAN_S = 5 * 365 * 86400  # 2021-01-01 .. 2025-12-31
PARIS = timezone(timedelta(hours=1))


def rid(kind: str, i: int) -> str:
    """A UUID-shaped id, stable for (kind, index)."""
    return str(uuid.UUID(bytes=hashlib.md5(f"{kind}:{i}".encode()).digest(), version=4))


def _rng(kind: str, i: int) -> random.Random:
    return random.Random(f"{SEED}:{kind}:{i}")


def counts(docs: int) -> dict[str, int]:
    blocks = docs // BLOCK
    return {"DocumentReference": blocks * BLOCK, "Patient": blocks * PATIENTS_PER_BLOCK,
            "Practitioner": max(50, docs // 200), "AuditEvent": blocks * AUDIT_PER_BLOCK}


def organization_ids() -> list[str]:
    return [rid("Organization", i) for i in range(5)]


def organization(i: int) -> dict:
    return dict(base.organizations(5)[i], id=rid("Organization", i))


def practitioner(i: int) -> dict:
    r = base.practitioners(1, seed=hash_seed("Practitioner", i))[0]
    r["identifier"][0]["value"] = f"10{100000000 + i * 7919 % 900000000:09d}"  # unique RPPS
    return dict(r, id=rid("Practitioner", i))


def hash_seed(kind: str, i: int) -> int:
    return int.from_bytes(hashlib.md5(f"{SEED}:{kind}:{i}".encode()).digest()[:8], "big")


def patient(i: int) -> dict:
    """Patient i; `generalPractitioner` is one of the first 50 practitioners (always loaded)."""
    rng = _rng("Patient", i)
    gp = [rid("Practitioner", k) for k in range(50)]
    r = base.patient(rng, gp, organization_ids())
    # the NIR's 3-digit order number collides across 100k+ patients: make the INS unique per index
    ins = r["identifier"][0]["value"]
    body = ins[:7] + f"{i % 1000000:06d}"
    r["identifier"][0]["value"] = body + f"{97 - int(body) % 97:02d}"
    return dict(r, id=rid("Patient", i))


def _instant(rng: random.Random) -> str:
    t = DATE_START + timedelta(seconds=rng.randrange(DATE_SPAN_S))
    return t.astimezone(PARIS).isoformat()


def practitioners_at(doc_index: int) -> int:
    """How many practitioners exist once the block of document `doc_index` is loaded."""
    return max(50, (doc_index // BLOCK + 1) * BLOCK // 200)


def document_reference(j: int) -> dict:
    rng = _rng("DocumentReference", j)
    block = j // BLOCK
    p = block * PATIENTS_PER_BLOCK + rng.randrange(PATIENTS_PER_BLOCK)
    code, display, _ = rng.choices(DOC_TYPES, weights=_TYPE_WEIGHTS)[0]
    cat_code, cat_display = CATEGORY_OF[code]
    author = rng.randrange(practitioners_at(j))
    date = _instant(rng)
    fac_code, fac_display = rng.choice(FACILITY)
    return {
        "resourceType": "DocumentReference",
        "id": rid("DocumentReference", j),
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.250.1.999.1.{j}"},
        "identifier": [{"system": "urn:oid:1.2.250.1.999.2", "value": f"DOC{j:09d}"}],
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "category": [{"coding": [{"system": CLASS_SYSTEM, "code": cat_code, "display": cat_display}]}],
        "subject": {"reference": f"Patient/{rid('Patient', p)}"},
        "date": date,
        "author": [{"reference": f"Practitioner/{rid('Practitioner', author)}"}],
        "custodian": {"reference": f"Organization/{rng.choice(organization_ids())}"},
        "description": f"{display} — {rng.choice(['Hôpital Édouard-Herriot', 'CHU de Besançon', 'Clinique Sainte-Thérèse', 'Centre Léon-Bérard'])}",
        "securityLabel": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                       "code": rng.choice("NNNR")}]}],
        "content": [{
            "attachment": {"contentType": "application/pdf", "language": "fr-FR",
                           "url": f"https://ged.example.fr/documents/DOC{j:09d}.pdf",
                           "size": rng.randint(20_000, 2_000_000), "title": f"{display}.pdf", "creation": date},
            "format": {"system": "urn:oid:1.3.6.1.4.1.19376.1.2.3", "code": "urn:ihe:iti:xds-sd:pdf:2008"},
        }],
        "context": {"facilityType": {"coding": [{"system": FACILITY_SYSTEM, "code": fac_code,
                                                 "display": fac_display}]},
                    "period": {"start": date}},
    }


def doc_patient(j: int) -> int:
    """Index of the patient that document j is about (same draw as document_reference)."""
    rng = _rng("DocumentReference", j)
    return (j // BLOCK) * PATIENTS_PER_BLOCK + rng.randrange(PATIENTS_PER_BLOCK)


def audit_event(k: int) -> dict:
    rng = _rng("AuditEvent", k)
    block = k // AUDIT_PER_BLOCK
    p = block * PATIENTS_PER_BLOCK + rng.randrange(PATIENTS_PER_BLOCK)
    doc = block * BLOCK + rng.randrange(BLOCK)
    read = rng.random() < 0.8
    who = rng.randrange(max(50, (block + 1) * BLOCK // 200))
    return {
        "resourceType": "AuditEvent",
        "id": rid("AuditEvent", k),
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110",
                 "display": "Patient Record"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read" if read else "create"}],
        "action": "R" if read else "C",
        "recorded": _instant(rng),
        "outcome": "0",
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": "IRCP"}]},
                   "who": {"reference": f"Practitioner/{rid('Practitioner', who)}"}, "requestor": True}],
        "source": {"site": "DPI Hôpital Édouard-Herriot",
                   "observer": {"display": "Serveur FHIR"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
        "entity": [
            {"what": {"reference": f"Patient/{rid('Patient', p)}"},
             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"}},
            {"what": {"reference": f"DocumentReference/{rid('DocumentReference', doc)}"},
             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"}},
        ],
    }


def resources(kind: str, start: int, stop: int) -> list[dict]:
    make = {"Patient": patient, "Practitioner": practitioner, "DocumentReference": document_reference,
            "AuditEvent": audit_event, "Organization": organization}[kind]
    return [make(i) for i in range(start, stop)]
