"""The shared medical record's vocabulary: its policies, labels and categories, and the shape rules
the server enforces on the resources that carry them (422 when broken).

Policies (`Consent.policy.uri`), defined by this server and published in its CapabilityStatement
(`rest.security.description`) and README:

* `RECORD_POLICY` — the record-creation Consent: the patient agreed that their shared record exists.
  `status` active = the record is *open*; a record whose creation Consents are all inactive is
  *closed* (no professional access, no writes). `performer` = the patient, or the professional who
  recorded the patient's agreement (that professional is authorized by it).
* `AUTHORIZATION_POLICY` — an access authorization in the sense of IHE PCF (scope
  `patient-privacy`): one root `provision` of type `permit` (an authorization) or `deny` (a block),
  naming its actors (role IRCP: Practitioner, PractitionerRole or Organization), with an optional
  `period`, `action` (consentaction `access` = read, `collect` = add documents; none = both) and
  `purpose`. A `deny` without actors must have purpose `BTG`: the patient's refusal of emergency
  access. Nested provisions (PCF Intermediate) are refused rather than half-understood.

Security labels (`meta.security`, system `SECURITY_SYSTEM`):
* `masked` — set by the patient: hidden from professionals other than the author and the patient's
  general practitioner (DMP "document masqué");
* `hidden-from-patient` — set by a professional: the patient does not see the document until a
  professional lifts it (pending the consultation that announces it).

`Consent.meta.tag` with system `ORIGIN_SYSTEM` says who recorded a Consent (patient, professional,
administrator); professionals must mark theirs. `DocumentReference.category` with
`CATEGORY_SYSTEM|patient-authored` marks the documents of the patient's personal space.
"""

from __future__ import annotations

from fhir_server.fhir.outcome import Issue

RECORD_POLICY = "urn:fhir-dmp:policy:record"
AUTHORIZATION_POLICY = "urn:fhir-dmp:policy:authorization"
POLICIES = (RECORD_POLICY, AUTHORIZATION_POLICY)
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
ACTION_CODES = {"access": "read", "collect": "add"}
READ, ADD = "read", "add"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BTG = "BTG"
ACTOR_TYPES = ("Practitioner", "PractitionerRole", "Organization")

SECURITY_SYSTEM = "urn:fhir-dmp:security"
MASKED = "masked"
HIDDEN_FROM_PATIENT = "hidden-from-patient"
# on an AuditEvent of an attempt refused on a record: it names the patient, which the refused actor
# may not learn, so it is the patient's and auditors' to read, not the actor's (access/audit_readers.py)
HIDDEN_FROM_AGENT = "hidden-from-agent"
ORIGIN_SYSTEM = "urn:fhir-dmp:consent-origin"
ORIGINS = ("patient", "professional", "administrator")
CATEGORY_SYSTEM = "urn:fhir-dmp:document-category"
PATIENT_AUTHORED = "patient-authored"


def _codes(concept) -> list[tuple[str | None, str | None]]:
    if not isinstance(concept, dict):
        return []
    return [(c.get("system"), c.get("code")) for c in concept.get("coding") or () if isinstance(c, dict)]


def policy_of(consent: dict) -> str | None:
    """This server's policy a Consent is under, or None."""
    for p in consent.get("policy") or ():
        if isinstance(p, dict) and p.get("uri") in POLICIES:
            return p["uri"]
    rule = consent.get("policyRule")
    for system, code in _codes(rule):
        if system is None and code in POLICIES:
            return code
    return None


def labels(resource: dict) -> set[str]:
    """This server's security labels on a resource (`masked`, `hidden-from-patient`)."""
    meta = resource.get("meta")
    out = set()
    if isinstance(meta, dict):
        for c in meta.get("security") or ():
            if isinstance(c, dict) and c.get("system") == SECURITY_SYSTEM and isinstance(c.get("code"), str):
                out.add(c["code"])
    return out


def origin_of(consent: dict) -> str | None:
    meta = consent.get("meta")
    if isinstance(meta, dict):
        for c in meta.get("tag") or ():
            if isinstance(c, dict) and c.get("system") == ORIGIN_SYSTEM and c.get("code") in ORIGINS:
                return c["code"]
    return None


def is_patient_authored(doc: dict) -> bool:
    return any((s, c) == (CATEGORY_SYSTEM, PATIENT_AUTHORED)
               for cat in doc.get("category") or () for s, c in _codes(cat))


def ref_of(value) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return value["reference"]
    return None


def _issue(path: str, text: str) -> Issue:
    return Issue("error", "business-rule", f"{path}: {text}", [path])


def consent_issues(consent: dict) -> list[Issue]:
    """Shape rules of the record's Consents (module docstring); [] for other Consents."""
    policy = policy_of(consent)
    if policy is None:
        if any(code == "patient-privacy" for _, code in _codes(consent.get("scope"))):
            return [_issue("Consent.policy", "a patient-privacy Consent must name one of this server's policies: "
                                             + ", ".join(POLICIES))]
        return []
    issues = []
    patient = ref_of(consent.get("patient"))
    if not (patient and patient.startswith("Patient/") and patient.count("/") == 1):
        issues.append(_issue("Consent.patient", "must reference the record's Patient (Patient/<id>)"))
    provision = consent.get("provision")
    if policy == RECORD_POLICY:
        performers = [ref_of(p) for p in consent.get("performer") or ()]
        if not performers or not all(p and p.split("/")[0] in ("Patient", "Practitioner") for p in performers):
            issues.append(_issue("Consent.performer", "the record-creation Consent names who agreed or recorded the "
                                                      "agreement: the Patient or a Practitioner"))
        if isinstance(provision, dict) and provision.get("type", "permit") != "permit":
            issues.append(_issue("Consent.provision.type", "a record-creation Consent permits"))
        return issues
    if not any(code == "patient-privacy" for _, code in _codes(consent.get("scope"))):
        issues.append(_issue("Consent.scope", f"an authorization has scope {CONSENT_SCOPE}|patient-privacy"))
    if not isinstance(provision, dict) or provision.get("type") not in ("permit", "deny"):
        return issues + [_issue("Consent.provision.type", "an authorization has one provision of type permit or "
                                                          "deny")]
    if provision.get("provision"):
        issues.append(_issue("Consent.provision.provision", "nested provisions are not supported: record one "
                                                            "authorization or block per Consent"))
    actors = provision.get("actor") or []
    for i, actor in enumerate(actors):
        path = f"Consent.provision.actor[{i}]"
        ref = ref_of(actor.get("reference")) if isinstance(actor, dict) else None
        if not ref or ref.split("/")[0] not in ACTOR_TYPES or ref.count("/") != 1:
            issues.append(_issue(path + ".reference", "an actor is a local Practitioner, PractitionerRole or "
                                                      "Organization"))
        roles = _codes(actor.get("role")) if isinstance(actor, dict) else []
        if (PARTICIPATION, "IRCP") not in roles:
            issues.append(_issue(path + ".role", f"the actor's role is {PARTICIPATION}|IRCP"))
    purposes = [code for p in provision.get("purpose") or () if isinstance(p, dict) for code in [p.get("code")]]
    if provision["type"] == "permit" and not actors:
        issues.append(_issue("Consent.provision.actor", "an authorization names the professionals it permits"))
    if provision["type"] == "deny" and not actors and purposes != [BTG]:
        issues.append(_issue("Consent.provision.actor", "a deny without actors is only the refusal of emergency "
                                                        "access (purpose BTG)"))
    for i, action in enumerate(provision.get("action") or ()):
        codes = _codes(action)
        if not codes or not all(s == CONSENT_ACTION and c in ACTION_CODES for s, c in codes):
            issues.append(_issue(f"Consent.provision.action[{i}]", f"actions are {CONSENT_ACTION} access (read) or "
                                                                   "collect (add documents)"))
    return issues


def document_issues(doc: dict) -> list[Issue]:
    """A document of the record is about one patient."""
    subject = ref_of(doc.get("subject"))
    if not (subject and subject.startswith("Patient/") and subject.count("/") == 1):
        return [_issue("DocumentReference.subject", "a document of the record has a subject: its Patient "
                                                    "(Patient/<id>)")]
    return []


def record_issues(resource: dict, rtype: str) -> list[Issue]:
    if rtype == "Consent":
        return consent_issues(resource)
    if rtype == "DocumentReference":
        return document_issues(resource)
    return []
