"""A Provenance for every write (FHIR R4 Provenance: https://hl7.org/fhir/R4/provenance.html).

Every create, update, patch and delete — a Bundle entry, a conditional write and a label that a
document's Binaries follow included — records one Provenance: `target` the version written
(`Type/id/_history/n`), `recorded` the write's instant, `activity` CREATE/UPDATE/DELETE
(v3-DataOperation), the agents (the user by `fhirUser`; the client application, with the
Organization it acts for when known) and the token's purpose of use as `reason`.

Why it is not a `Hook` (records/hooks.py): hooks hear a write after it happened, so a Provenance
stored by one would be a second, separate write, and FerretDB v1 has no transaction to make the
two atomic. Instead `Records` hands the repository a builder, and the repository stores the
Provenance *inside the history version the write inserts anyway* (one document, atomic on every
engine), then projects it into the Provenance collection by the same roll-forward that makes a
version current (storage/repository.py; docs/decisions.md "Provenance").

A client may send its own Provenance in the `X-Provenance` header
(https://hl7.org/fhir/R4/http.html#provenance): its target must be the resource written (or
absent: the server fills it in, as the client cannot know a new id or version) and its agents
must be the caller; otherwise 400 and nothing is written. The server still sets `target`,
`recorded`, `activity` and the patient.

Each Provenance names, in the extension `PATIENT_EXTENSION` (R5's `Provenance.patient`), the
patients whose record the written resource belongs to. The `patient` search parameter reads it
(data/local_search_parameters.json), so a Provenance is in those patients' compartments and
their consent decides who sees it, exactly as for the resource it describes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from datetime import datetime

from fhir_server.auth.principal import Principal
from fhir_server.fhir import dmp
from fhir_server.fhir.outcome import FhirError
from fhir_server.records.audit import CLIENT_SYSTEM, USER_SYSTEM
from fhir_server.storage.documents import OP_CREATE, OP_DELETE, OP_UPDATE, fhir_instant

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PATIENT_EXTENSION = "urn:fhir-dmp:StructureDefinition/provenance-patient"
ACTIVITY = {OP_CREATE: ("CREATE", "create"), OP_UPDATE: ("UPDATE", "revise"), OP_DELETE: ("DELETE", "delete")}
# the trail itself: a Provenance of a Provenance (or of an AuditEvent) would describe nothing new
NOT_RECORDED = frozenset({"AuditEvent", "Provenance"})

# (version, op, recorded) -> the Provenance of that version, without id and meta (the repository's)
ProvenanceOf = Callable[[int, str, datetime], dict]


def _coding(system: str, code: str, display: str) -> dict:
    return {"system": system, "code": code, "display": display}


def _user_ref(p: Principal) -> dict:
    if p.fhir_user:
        return {"reference": p.fhir_user}
    return {"identifier": {"system": USER_SYSTEM, "value": str(p.subject)}}


def _client_ref(p: Principal) -> dict:
    app = str(p.client_id or p.subject)
    return {"type": "Device", "identifier": {"system": CLIENT_SYSTEM, "value": app}, "display": app}


def agents(p: Principal) -> list[dict]:
    """The user as author, and the client application as enterer (the author when no user is
    involved: backend services), acting for its Organization when it is registered for one."""
    out: list[dict] = []
    if p.kind in ("user", "developer"):
        out.append({"type": {"coding": [_coding(PARTICIPANT, "author", "Author")]}, "who": _user_ref(p)})
    if p.client_id or p.kind == "client":
        author = not out
        client: dict = {"type": {"coding": [_coding(PARTICIPANT, "author", "Author") if author
                                            else _coding(PARTICIPANT, "enterer", "Enterer")]},
                        "who": _client_ref(p)}
        if p.organization:
            client["onBehalfOf"] = {"reference": p.organization}
        out.append(client)
    if not out:
        out.append({"who": {"display": "anonymous"}})
    return out


def reasons(p: Principal) -> list[dict]:
    out = []
    for code in p.purpose_of_use:
        concept: dict = {"coding": [{"system": ACT_REASON, "code": code}]}
        if code == "BTG" and p.btg_reason:
            concept["text"] = p.btg_reason
        out.append(concept)
    return out


_REF = re.compile(r"(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?")


def _identities(p: Principal) -> list[dict]:
    """How an agent may name the caller: the user, the client application, its Organization."""
    out = []
    if p.kind in ("user", "developer"):
        out.append(_user_ref(p))
    if p.client_id or p.kind == "client":
        out.append(_client_ref(p))
    if p.organization:
        out.append({"reference": p.organization})
    return out


def _names(ref: object, who: dict) -> bool:
    """Does the Reference `ref` name the party `who` (by reference, or by identifier system and value)?"""
    if not isinstance(ref, dict):
        return False
    if "reference" in who:
        return ref.get("reference") == who["reference"]
    ident, want = ref.get("identifier"), who["identifier"]
    return "reference" not in ref and isinstance(ident, dict) and (ident.get("system"), ident.get("value")) == (
        want["system"], want["value"])


def check_supplied(p: Principal, rtype: str, rid: str, supplied: dict) -> None:
    """The client's Provenance (X-Provenance) describes this write by this caller, or 400."""
    for i, target in enumerate(supplied.get("target") or ()):
        ref = target.get("reference") if isinstance(target, dict) else None
        m = _REF.fullmatch(ref) if isinstance(ref, str) else None
        if m is None or (m[1], m[2]) != (rtype, rid):
            raise FhirError(400, "invalid", f"X-Provenance: the target must be the resource written ({rtype}/{rid})",
                            [f"Provenance.target[{i}]"])
    mine = _identities(p)
    requestor = mine[:1]  # the user, or the client when no user is involved
    named_requestor = False
    for i, agent in enumerate(supplied.get("agent") or ()):
        for part in ("who", "onBehalfOf"):
            ref = agent.get(part) if isinstance(agent, dict) else None
            if ref is None and part == "onBehalfOf":
                continue
            if not any(_names(ref, who) for who in mine):
                raise FhirError(400, "invalid", "X-Provenance: every agent must be the caller (their fhirUser, the "
                                                "client application or its Organization)",
                                [f"Provenance.agent[{i}].{part}"])
            named_requestor = named_requestor or any(_names(ref, who) for who in requestor)
    if not named_requestor:
        raise FhirError(400, "invalid", "X-Provenance: an agent must name the caller", ["Provenance.agent"])


class ProvenanceRecorder:
    """Builds the Provenance of each write for the repository (one per composition root)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # False only for the benchmark (FHIR_PROVENANCE=false)

    def for_write(self, principal: Principal, rtype: str, rid: str, patients: set[str],
                  supplied: dict | None = None, labels: AbstractSet[str] = frozenset()) -> ProvenanceOf | None:
        """The builder the repository calls with the version it writes; raises 400 first when the
        client's own Provenance does not describe this write by this caller. `labels`: the DMP
        visibility labels of what was written (masked, hidden from the patient), which the
        Provenance carries so that it is seen by no one who may not see its target."""
        if rtype in NOT_RECORDED:
            if supplied is not None:
                raise FhirError(400, "not-supported", f"X-Provenance does not apply to writes of {rtype}")
            return None
        if supplied is not None:
            check_supplied(principal, rtype, rid, supplied)
        if not self.enabled:
            return None
        extensions = [{"url": PATIENT_EXTENSION, "valueReference": {"reference": f"Patient/{pid}"}}
                      for pid in sorted(patients)]
        base: dict = {k: v for k, v in (supplied or {}).items()
                      if k not in ("resourceType", "id", "meta", "target", "recorded", "activity", "extension")}
        if supplied is not None:  # the client's own extensions, never a patient it names itself
            extensions += [e for e in supplied.get("extension") or () if e.get("url") != PATIENT_EXTENSION]
        if "agent" not in base:
            base["agent"] = agents(principal)
        if "reason" not in base and principal.purpose_of_use:
            base["reason"] = reasons(principal)

        def build(version: int, op: str, recorded: datetime) -> dict:
            code, display = ACTIVITY[op]
            out: dict = {"resourceType": "Provenance"}
            if labels:
                out["meta"] = {"security": security_labels(labels)}
            if extensions:
                out["extension"] = extensions
            out["target"] = [{"reference": f"{rtype}/{rid}/_history/{version}"}]
            out["recorded"] = fhir_instant(recorded)
            out.update(base)
            out["activity"] = {"coding": [_coding(DATA_OPERATION, code, display)]}
            return out

        return build


def security_labels(labels: AbstractSet[str]) -> list[dict]:
    return [{"system": dmp.SECURITY_SYSTEM, "code": code} for code in sorted(labels)]
