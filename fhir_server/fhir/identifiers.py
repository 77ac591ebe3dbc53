"""French national identifiers: the patient's INS and the professional's RPPS / IDNPS.

* INS (Identifiant National de Santé, FR Core `Patient.identifier`): the NIR (13 characters) or a
  NIA, followed by its 2-digit key, under one of the OIDs below. The key is
  97 − (NIR mod 97), where a Corsican department code counts as a number (2A → 19, 2B → 18).
  https://interop.esante.gouv.fr/ig/fhir/core/ (FR Core identifiers) and the CNAM NIR rules.
* RPPS: 11 digits, the last a Luhn check digit (https://esante.gouv.fr/produits-services/repertoire-rpps).
* IDNPS (`urn:oid:1.2.250.1.71.4.2.1`): the professional's national id as carried on the CPS card;
  for an RPPS professional it is "8" + RPPS, for an ADELI one "0" + the 9-character ADELI number.

An INS identifies exactly one record, so its normalized `system|value` is a *unique key* of the
Patient (`unique_keys`), enforced by the storage layer under concurrency.

Malformed values are refused with 422 (valid FHIR, but not a valid French identifier), with an
`expression` naming the identifier, before anything is stored.
"""

from __future__ import annotations

import re

from fhir_server.fhir.outcome import Issue

INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
INS_NIA = "urn:oid:1.2.250.1.213.1.4.9"
INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
INS_NIR_DEMO = "urn:oid:1.2.250.1.213.1.4.11"
INS_SYSTEMS = (INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIR_DEMO)
RPPS = "https://rpps.esante.gouv.fr"
IDNPS = "urn:oid:1.2.250.1.71.4.2.1"

# sex (1, 2; 3, 4 and 7, 8 for provisional and foreign-born numbers), year, month (01-12, or 20-99
# when unknown), department (2 digits, 2A or 2B), commune, order number; then the key.
_NIR = re.compile(r"[1-478][0-9]{2}(?:0[1-9]|1[0-2]|[2-9][0-9])(?:[0-9]{2}|2[AB])[0-9]{6}")
_KEY = re.compile(r"[0-9]{2}")


def nir_key(nir: str) -> int:
    """The control key of a 13-character NIR (Corsica: 2A counts as 19, 2B as 18)."""
    digits = nir[:5] + {"2A": "19", "2B": "18"}.get(nir[5:7], nir[5:7]) + nir[7:]
    return 97 - int(digits) % 97


def ins_problem(value: str) -> str | None:
    """Why `value` is not a valid INS (NIR or NIA + key), or None."""
    if len(value) != 15:
        return "an INS is 15 characters: the 13-character NIR followed by its 2-digit key"
    nir, key = value[:13], value[13:]
    if not _NIR.fullmatch(nir):
        return "the NIR part of the INS is malformed (sex, year, month, department, commune, order)"
    if not _KEY.fullmatch(key) or int(key) != nir_key(nir):
        return "the INS key does not match its NIR (key = 97 - NIR mod 97; 2A counts as 19, 2B as 18)"
    return None


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def rpps_problem(value: str) -> str | None:
    if not (len(value) == 11 and value.isascii() and value.isdigit()):
        return "an RPPS number is 11 digits"
    if not luhn_valid(value):
        return "the RPPS number's check digit (Luhn) is wrong"
    return None


def idnps_problem(value: str) -> str | None:
    if value.startswith("8"):
        problem = rpps_problem(value[1:])
        return f"an IDNPS starting with 8 is 8 + the RPPS number: {problem}" if problem else None
    if value.startswith("0"):
        ok = len(value) == 10 and value[1:].isascii() and value[1:].isalnum()
        return None if ok else "an IDNPS starting with 0 is 0 + the 9-character ADELI number"
    if len(value) > 1 and value[0] in "13456" and re.fullmatch(r"[0-9A-Za-z/\-]+", value):
        return None  # other structures (FINESS / SIREN / SIRET based): no check digit defined here
    return "an IDNPS starts with 8 (RPPS), 0 (ADELI), or 1, 3, 4, 5, 6 (structure-based identifiers)"


_CHECKS = {
    "Patient": {s: ins_problem for s in INS_SYSTEMS},
    "Practitioner": {RPPS: rpps_problem, IDNPS: idnps_problem},
}


def identifier_issues(resource: dict, rtype: str) -> list[Issue]:
    """422 issues for malformed national identifiers of a Patient or a Practitioner."""
    checks = _CHECKS.get(rtype)
    if not checks:
        return []
    issues = []
    for i, ident in enumerate(resource.get("identifier") or ()):
        if not isinstance(ident, dict):
            continue
        check = checks.get(str(ident.get("system")))
        value = ident.get("value")
        if check is None or not isinstance(value, str):
            if check is not None:
                path = f"{rtype}.identifier[{i}]"
                issues.append(Issue("error", "business-rule", f"{path}: a national identifier needs a value", [path]))
            continue
        problem = check(value)
        if problem:
            path = f"{rtype}.identifier[{i}].value"
            issues.append(Issue("error", "business-rule", f"{path}: {problem}", [path]))
    return issues


def ins_values(resource: dict) -> list[str]:
    """`system|value` of each INS a Patient carries."""
    out = []
    for ident in resource.get("identifier") or ():
        if isinstance(ident, dict) and ident.get("system") in INS_SYSTEMS and isinstance(ident.get("value"), str):
            out.append(f"{ident['system']}|{ident['value']}")
    return out


def unique_keys(rtype: str, resource: dict) -> list[str]:
    """Keys no two current resources may share (storage enforces them): a Patient's INS."""
    if rtype != "Patient":
        return []
    return sorted({"ins:" + v for v in ins_values(resource)})


def rpps_of(resource: dict) -> str | None:
    for ident in resource.get("identifier") or ():
        if isinstance(ident, dict) and ident.get("system") == RPPS and isinstance(ident.get("value"), str):
            return ident["value"]
    return None
