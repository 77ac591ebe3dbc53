"""Human-readable text of an AuditEvent, in French or English, for the patient's access history
(`Patient/{id}/$access-history`, issue 10 item 5).

The DMP leaflet promises "qui l'a consulté, quand et pour quoi faire"; this module says it in a
sentence ("12/03/2026 14:02 UTC — Dr Jean Martin (Clinique O) a consulté : Compte rendu
(Compte rendu de consultation). Motif : urgence (bris de glace) — « patient inconscient ».")
from an AuditEvent written after IHE BALP (records/audit.py, auth events, break-glass) and the
names the records layer resolved. Pure: no I/O, no access decisions (what may be named was decided
before); the result is an XHTML narrative (R4 `Narrative.div`), escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

LANGUAGES = ("fr", "en")
DCM = "http://dicom.nema.org/resources/ontology/DCM"

_T = {
    "you": ("vous", "you"),
    "someone": ("quelqu'un", "someone"),
    "app": ("l'application", "the application"),
    "read": ("a consulté", "viewed"),
    "search": ("a recherché dans le dossier", "searched the record"),
    "create": ("a ajouté", "added"),
    "update": ("a modifié", "changed"),
    "delete": ("a supprimé", "deleted"),
    "operation": ("a utilisé l'opération", "used the operation"),
    "bundle": ("a envoyé un lot de requêtes", "sent a batch of requests"),
    "login": ("s'est connecté(e)", "signed in"),
    "logout": ("a mis fin à un accès", "ended an access"),
    "token": ("a obtenu un accès pour", "was granted access for"),
    "btg": ("a déclaré un accès en urgence (bris de glace) à", "declared emergency access (break-glass) to"),
    "audit-used": ("a géré le journal d'audit", "managed the audit log"),
    "other": ("a effectué l'action", "performed the action"),
    "hidden": ("un document qui ne vous est pas encore accessible", "a document not yet available to you"),
    "record": ("le dossier", "the record"),
    "why": ("Motif", "Purpose"),
    "BTG": ("urgence (bris de glace)", "emergency (break-glass)"),
    "TREAT": ("soins", "treatment"),
    "outcome-0": ("réussi", "succeeded"),
    "outcome-4": ("refusé", "refused"),
    "outcome-8": ("échec", "failed"),
    "outcome-12": ("échec", "failed"),
    "result": ("Résultat", "Outcome"),
    "via": ("via", "via"),
}
_VERB = {"read": "read", "vread": "read", "search-type": "search", "search-system": "search",
         "history-instance": "search", "history-type": "search", "history-system": "search",
         "create": "create", "update": "update", "patch": "update", "delete": "delete", "operation": "operation",
         "batch": "bundle", "transaction": "bundle"}
_DCM_VERB = {"110122": "login", "110123": "logout", "110127": "btg", "ITI-71": "token"}


def t(key: str, lang: str) -> str:
    fr, en = _T[key]
    return fr if lang == "fr" else en


def negotiate(param: str | None, accept_language: str | None) -> str | None:
    """The language asked: `_lang` first, else the best of Accept-Language (q-values), else French
    (the DMP's). None when `_lang` names a language we do not write."""
    if param is not None:
        return param if param in LANGUAGES else None
    best, best_q = "fr", -1.0
    for part in (accept_language or "").split(","):
        tag, _, q = part.strip().partition(";q=")
        primary = tag.strip().split("-")[0].lower()
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            continue
        if primary in LANGUAGES and weight > best_q and weight > 0:
            best, best_q = primary, weight
    return best


@dataclass(slots=True)
class Line:
    """What one sentence says, already resolved (names, titles) as far as the caller may know."""

    when: str
    who: str
    organizations: list[str]
    application: str | None
    verb: str  # a key of _T, or "other"
    action_text: str | None  # for "operation" (its name) and "other" (the event type)
    objects: list[str]
    purposes: list[tuple[str, str | None]]  # (code, free text)
    outcome: str


def verb_of(event: dict) -> tuple[str, str | None]:
    etype = event.get("type") or {}
    sub = [s for s in event.get("subtype") or () if isinstance(s, dict)]
    code = etype.get("code")
    if code == "rest":
        verb = _VERB.get(str(sub[0].get("code")) if sub else "", "other")
        if verb == "operation":
            names = [e.get("name") for e in event.get("entity") or () if isinstance(e, dict)
                     and isinstance(e.get("name"), str) and e["name"].startswith("$")]
            return verb, names[0] if names else None
        return verb, None
    if code == "110101":
        return "audit-used", None
    for s in sub:
        if s.get("code") in _DCM_VERB:
            return _DCM_VERB[s["code"]], None
    return "other", etype.get("display") or code


def sentence(line: Line, lang: str) -> str:
    who = line.who
    if line.organizations:
        who += f" ({', '.join(line.organizations)})"
    if line.application:
        who += f", {t('via', lang)} {t('app', lang)} {line.application}"
    action = t(line.verb, lang)
    if line.action_text:
        action += f" {line.action_text}"
    text = f"{line.when} — {who} {action}"
    if line.objects:
        text += " : " if lang == "fr" else ": "
        text += "; ".join(line.objects)
    text += "."
    if line.purposes:
        reasons = []
        for code, free in line.purposes:
            label = t(code, lang) if code in ("BTG", "TREAT") else code
            reasons.append(label + (f" — « {free} »" if lang == "fr" else f' — "{free}"') if free else label)
        text += f" {t('why', lang)} : " if lang == "fr" else f" {t('why', lang)}: "
        text += ", ".join(reasons) + "."
    outcome = t(f"outcome-{line.outcome}", lang) if f"outcome-{line.outcome}" in _T else line.outcome
    text += (f" {t('result', lang)} : " if lang == "fr" else f" {t('result', lang)}: ") + outcome + "."
    return text[0].upper() + text[1:] if text else text


def narrative(text: str) -> dict:
    return {"status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text, quote=False)}</p></div>'}
