"""`Patient/{id}/$access-history`: who did what in a patient's record, when, why and with what
outcome, readable by the patient (issue 10 item 5; the DMP leaflet's "qui l'a consulté, quand et
pour quoi faire"). A server-defined operation:

    GET [base]/Patient/{id}/$access-history[?_count=n][&_lang=fr|en]

The answer is a `searchset` Bundle of the record's AuditEvents, newest first, each *as stored*
plus display elements that change no recorded fact (docs/decisions.md, "Access history"):
`language`; a generated narrative (`text`) saying the event in one sentence in French or English;
`agent.name` and `agent.who.display` (the professional's name and organizations, their IDNPS/RPPS
in `agent.who.identifier`); `entity.name` and `entity.description` (a document's title and type,
or that it is not shown); and `meta.tag` flags `urn:fhir-dmp:access-history|break-glass`,
`|refused`, `|failed`. `fullUrl` is the stored AuditEvent, which `$verify` covers.

Language: `_lang` (fr, en) or else `Accept-Language`, French by default. Paging: `_count` and a
sealed `next` link bound to the caller, as for searches. Who may ask, and what is named, is the
decision point's and the records layer's (access/audit_readers.py, records/access_history.py).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from urllib.parse import quote

from fhir_server.fhir import audit_text
from fhir_server.fhir.audit_text import Line, t
from fhir_server.fhir.outcome import FhirError
from fhir_server.records.access_history import AccessHistoryPage
from fhir_server.rest.context import RequestContext
from fhir_server.rest.interaction import Interaction
from fhir_server.rest.paging import binding, decode_cursor, encode_cursor, page_size
from fhir_server.rest.result import Result
from fhir_server.storage import keyset

FLAGS = "urn:fhir-dmp:access-history"
FLAG_DISPLAY = {"break-glass": "break-glass access", "refused": "refused", "failed": "failed"}
CLIENT_ROLES = ("110153", "110150")  # BALP Source Role ID, DICOM Application


def _when(recorded: str, lang: str) -> str:
    try:
        at = datetime.fromisoformat(recorded.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, AttributeError):
        return str(recorded)
    return at.strftime("%d/%m/%Y %H:%M:%S UTC" if lang == "fr" else "%Y-%m-%d %H:%M:%S UTC")


def _codes(concepts) -> list[tuple[str, str | None]]:
    out = []
    for c in concepts or ():
        if not isinstance(c, dict):
            continue
        codes = [x.get("code") for x in c.get("coding") or () if isinstance(x, dict) and x.get("code")]
        out.append((str(codes[0]) if codes else "", c.get("text")))
    return out


def flags(event: dict) -> list[str]:
    out = []
    purposes = _codes(event.get("purposeOfEvent")) + [p for a in event.get("agent") or () if isinstance(a, dict)
                                                      for p in _codes(a.get("purposeOfUse"))]
    if any(code == "BTG" for code, _ in purposes) or (event.get("type") or {}).get("code") == "110113":
        out.append("break-glass")
    outcome = event.get("outcome")
    if outcome == "4":
        out.append("refused")
    elif outcome in ("8", "12"):
        out.append("failed")
    return out


def _type_text(concept: dict | None) -> str | None:
    if not concept:
        return None
    for c in concept.get("coding") or ():
        if isinstance(c, dict) and c.get("display"):
            return str(c["display"])
    return concept.get("text") or next((str(c.get("code")) for c in concept.get("coding") or ()
                                        if isinstance(c, dict) and c.get("code")), None)


def enrich(event: dict, page: AccessHistoryPage, patient: str, lang: str) -> dict:
    """The stored AuditEvent plus display elements (never a changed fact)."""
    out = copy.deepcopy(event)
    out["language"] = lang
    me = f"Patient/{patient}"
    who_text, app = t("someone", lang), None
    orgs: list[str] = []
    for agent in out.get("agent") or ():
        who = agent.get("who") or {}
        ref = who.get("reference")
        roles = {c.get("code") for c in (agent.get("type") or {}).get("coding") or () if isinstance(c, dict)}
        party = page.parties.get(ref) if isinstance(ref, str) else None
        shown = who.get("display")
        org = page.parties.get(shown) if isinstance(shown, str) else None
        if party is not None and party.name:
            agent["name"] = party.name
            who["display"] = party.name + (f" ({', '.join(party.organizations)})" if party.organizations else "")
            if party.identifier and "identifier" not in who:
                who["identifier"] = party.identifier
        elif org is not None and org.name:
            who["display"] = org.name
        if roles & set(CLIENT_ROLES):
            app = (who.get("identifier") or {}).get("value") or app
            if org is not None and org.name and not agent.get("requestor"):
                orgs = orgs or [org.name]
        if agent.get("requestor"):
            if ref == me:
                who_text = t("you", lang)
            elif party is not None and party.name:
                who_text, orgs = party.name, list(party.organizations)
            elif org is not None and org.name:
                who_text = org.name
            elif isinstance(ref, str):
                who_text = ref
            elif (who.get("identifier") or {}).get("value"):
                who_text = str(who["identifier"]["value"])
                if roles & set(CLIENT_ROLES):
                    app = None  # the application acted on its own: it is the "who"
    objects = []
    for entity in out.get("entity") or ():
        ref = (entity.get("what") or {}).get("reference")
        if not isinstance(ref, str) or ref not in page.documents:
            continue
        doc = page.documents[ref]
        if doc is None:
            entity["description"] = t("hidden", lang)
            objects.append(t("hidden", lang))
            continue
        kind = _type_text(doc.type)
        if doc.title:
            entity["name"] = doc.title
        if kind:
            entity["description"] = kind
        label = doc.title or kind or ref.split("/_history/")[0].split("/")[0]
        objects.append(label + (f" ({kind})" if doc.title and kind else ""))
    verb, action_text = audit_text.verb_of(out)
    if not objects and verb in ("read", "search", "token", "btg"):
        objects = [t("record", lang)]
    line = Line(_when(str(out.get("recorded")), lang), who_text, orgs, app, verb, action_text, objects,
                _codes(out.get("purposeOfEvent")), str(out.get("outcome") or "0"))
    out["text"] = audit_text.narrative(audit_text.sentence(line, lang))
    tags = [{"system": FLAGS, "code": f, "display": FLAG_DISPLAY[f]} for f in flags(out)]
    if tags:
        meta = out.setdefault("meta", {})
        meta["tag"] = [*meta.get("tag", []), *tags]
    return out


async def access_history(ctx: RequestContext, ix: Interaction) -> Result:
    if ix.type != "Patient" or ix.id is None:
        raise FhirError(400, "not-supported",
                        "$access-history is an operation on one Patient: Patient/{id}/$access-history")
    lang = audit_text.negotiate(ix.param("_lang"), ix.header("accept-language"))
    if lang is None:
        raise FhirError(400, "value", "_lang is fr or en", ["_lang"])
    count = page_size(ix.param("_count"), ctx.settings.default_page_size, ctx.settings.max_page_size) or 1
    path = f"Patient/{ix.id}/$access-history"
    bound = binding(ctx.principal, path)
    after = None
    cursor = ix.param("_cursor")
    if cursor:
        state = decode_cursor(cursor, ctx.cursor_key, bound)
        try:
            after = keyset.decode(state[0])
        except (ValueError, IndexError, TypeError):
            raise FhirError(400, "value", "the paging cursor is invalid or expired", ["_cursor"]) from None
    page = await ctx.data.access_history(ix.id, count=count, after=after)
    entries = [{"fullUrl": ctx.url("AuditEvent", v.id), "resource": enrich(event, page, ix.id, lang),
                "search": {"mode": "match"}} for v, event in page.events]
    base = ctx.url(path) + f"?_count={count}&_lang={quote(lang)}"
    links = [{"relation": "self", "url": base + (f"&_cursor={cursor}" if cursor else "")}]
    if page.next_position is not None:
        links.append({"relation": "next", "url": base + "&_cursor=" + encode_cursor(
            [keyset.encode(page.next_position)], ctx.cursor_key, bound)})
    bundle: dict = {"resourceType": "Bundle", "language": lang, "type": "searchset", "link": links}
    if entries:
        bundle["entry"] = entries
    return Result(status=200, resource=bundle)
