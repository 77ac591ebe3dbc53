"""Builders for the record's Consents, labels and documents, from the vocabulary the server
publishes (README "Patient control"): written out here, not imported, so the tests check the
published contract rather than the code's constants."""

from __future__ import annotations

RECORD_POLICY = "urn:fhir-dmp:policy:record"
AUTHORIZATION_POLICY = "urn:fhir-dmp:policy:authorization"
SECURITY = "urn:fhir-dmp:security"
ORIGIN = "urn:fhir-dmp:consent-origin"
CATEGORY = "urn:fhir-dmp:document-category"
SCOPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}
CATEGORY_CONSENT = [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
IRCP = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
ACTIONS = {"read": "access", "add": "collect"}
LOINC = "http://loinc.org"


def record_consent(patient: str, performer: str | None = None, status: str = "active") -> dict:
    """The patient's agreement that their shared record exists (performer: who agreed or recorded it)."""
    return {"resourceType": "Consent", "status": status, "scope": SCOPE, "category": CATEGORY_CONSENT,
            "patient": {"reference": f"Patient/{patient}"},
            "performer": [{"reference": performer or f"Patient/{patient}"}],
            "policy": [{"uri": RECORD_POLICY}], "provision": {"type": "permit"}}


def authorization(patient: str, actors=(), kind: str = "permit", actions=(), start=None, end=None,
                  purpose=None, origin: str | None = None, status: str = "active") -> dict:
    provision: dict = {"type": kind}
    if actors:
        provision["actor"] = [{"role": IRCP, "reference": {"reference": a}} for a in actors]
    if actions:
        provision["action"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                            "code": ACTIONS[a]}]} for a in actions]
    if start or end:
        provision["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if purpose:
        provision["purpose"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": purpose}]
    c = {"resourceType": "Consent", "status": status, "scope": SCOPE, "category": CATEGORY_CONSENT,
         "patient": {"reference": f"Patient/{patient}"}, "policy": [{"uri": AUTHORIZATION_POLICY}],
         "provision": provision}
    if origin:
        c["meta"] = {"tag": [{"system": ORIGIN, "code": origin}]}
    return c


def block(patient: str, actor: str) -> dict:
    return authorization(patient, [actor], kind="deny")


def emergency_refusal(patient: str) -> dict:
    return authorization(patient, kind="deny", purpose="BTG")


def document(patient: str, code: str = "11488-4", author: str | None = None, labels=(), patient_authored=False,
             **extra) -> dict:
    d = {"resourceType": "DocumentReference", "status": "current",
         "type": {"coding": [{"system": LOINC, "code": code}]},
         "subject": {"reference": f"Patient/{patient}"},
         "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}], **extra}
    if author:
        d["author"] = [{"reference": author}]
    if patient_authored:
        d["category"] = [{"coding": [{"system": CATEGORY, "code": "patient-authored"}]}]
    if labels:
        d["meta"] = {"security": [{"system": SECURITY, "code": c} for c in labels]}
    return d
