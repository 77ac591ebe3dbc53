"""R4 narrative rules for `text.div` (https://hl7.org/fhir/R4/narrative.html#xhtml), with a real
XML parser (expat, through xml.etree): txt-1 — XHTML in the XHTML namespace, only the basic
formatting elements and attributes, no scripts, event handlers, forms, frames or `javascript:`
URLs; txt-2 — some non-whitespace content. A narrative that fails is refused on every write path
(it is part of validation), so no stored resource carries script to the apps that render it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.entities import name2codepoint

XHTML = "http://www.w3.org/1999/xhtml"
# HTML 4.0 chapters 7-11 and 15 (less section 4 of chapter 9), <a>, images: the list the FHIR validator uses
ELEMENTS = frozenset("""
a abbr acronym address b bdo big blockquote br caption cite code col colgroup dd del dfn div dl dt em
h1 h2 h3 h4 h5 h6 hr i img ins kbd li map area ol p pre q samp small span strong sub sup table tbody td
tfoot th thead tr tt u ul var
""".split())
ATTRIBUTES = frozenset("""
abbr accesskey align alt axis bgcolor border cellhalign cellpadding cellspacing cellvalign char charoff
charset cite class colspan compact coords datetime dir frame headers height href hreflang hspace id lang
longdesc name nowrap rel rev rowspan rules scope shape span src start style summary tabindex title type
valign value vspace width usemap nohref
""".split()) | {"{http://www.w3.org/XML/1998/namespace}lang"}
_URL_ATTRIBUTES = ("href", "src", "cite", "longdesc", "usemap")
_SAFE_URL = re.compile(r"^(?:https?:|mailto:|tel:|urn:|#|/|\.|[^:/?#]*(?:[/?#]|$))", re.IGNORECASE)
_IMAGE_DATA = re.compile(r"^data:image/(?:png|gif|jpeg|webp);base64,", re.IGNORECASE)
_STYLE_DANGER = re.compile(r"expression\s*\(|url\s*\(|javascript:|@import|behavior\s*:", re.IGNORECASE)
_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_XML_BUILTIN = {"amp", "lt", "gt", "quot", "apos"}


def _entities_to_numeric(text: str) -> str:
    """HTML named entities (&nbsp;) as numeric references: XML knows only five by name."""
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name in _XML_BUILTIN or name not in name2codepoint:
            return m.group(0)
        return f"&#{name2codepoint[name]};"
    return _ENTITY.sub(sub, text)


def narrative_problem(div: str) -> str | None:
    """Why `div` is not an acceptable R4 narrative, or None."""
    upper = div.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper or "<?" in div:
        return "a narrative may not contain a DOCTYPE, entity declarations or processing instructions"
    try:
        root = ET.fromstring(_entities_to_numeric(div))
    except ET.ParseError as exc:
        return f"the narrative is not well-formed XHTML ({exc})"
    if root.tag != f"{{{XHTML}}}div":
        return 'the narrative must be one <div xmlns="http://www.w3.org/1999/xhtml"> element'
    for el in root.iter():
        ns, _, local = el.tag.rpartition("}")
        if ns != "{" + XHTML or local not in ELEMENTS:
            return f"<{local}> is not allowed in a narrative"
        for name, value in el.attrib.items():
            if name not in ATTRIBUTES:
                return f"the attribute '{name.rpartition('}')[2]}' is not allowed in a narrative"
            if name in _URL_ATTRIBUTES:
                url = re.sub(r"[\x00-\x20]", "", value)
                if not (_SAFE_URL.match(url) or (name == "src" and _IMAGE_DATA.match(url))):
                    return f"the URL in '{name}' is not allowed in a narrative (only http(s), mailto, relative)"
            if name == "style" and _STYLE_DANGER.search(value):
                return "a narrative's style may not load resources or run expressions"
    if not "".join(root.itertext()).strip() and root.find(f".//{{{XHTML}}}img") is None:
        return "the narrative has no content (txt-2)"
    return None
