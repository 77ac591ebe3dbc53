"""Server-rendered login, approval and error pages: plain HTML, one form each, accessible
(labels bound to fields, a main landmark and a heading, errors announced with role="alert"),
no script. Every value is escaped."""

from __future__ import annotations

import base64
import hashlib
from html import escape

from fhir_server.auth.scopes import ScopeError, parse_scope

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#111}
label{display:block;margin-top:1rem;font-weight:600}
input[type=text],input[type=password]{width:100%;padding:.5rem;font-size:1rem}
button{margin-top:1.5rem;margin-right:1rem;padding:.6rem 1.2rem;font-size:1rem}
.alert{border:2px solid #a00;padding:.5rem 1rem;color:#700}
fieldset{margin-top:1rem}
"""

# the CSP allows this stylesheet by its hash (ops/headers.py): no 'unsafe-inline'
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

_PERM_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>")


def login_page(rid: str, client_name: str, error: str | None = None, username: str = "") -> str:
    alert = f'<p class="alert" role="alert">{escape(error)}</p>' if error else ""
    return _page("Sign in", f"""{alert}
<p>The application <strong>{escape(client_name)}</strong> asks to access health records on your behalf.
Sign in to continue.</p>
<form method="post" action="login">
<input type="hidden" name="rid" value="{escape(rid)}">
<label for="username">User name</label>
<input type="text" id="username" name="username" autocomplete="username" required value="{escape(username)}">
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>""")


def describe_scope(scope: str) -> str:
    try:
        s = parse_scope(scope)
    except ScopeError:
        s = None
    if s is None:
        return {"openid": "Know who you are (OpenID Connect)",
                "fhirUser": "Know your FHIR identity (patient or professional record)",
                "profile": "Know your name",
                "launch": "Open in the context of the current patient",
                "launch/patient": "Work on one patient's record, chosen now",
                "launch/encounter": "Work on the current encounter",
                "offline_access": "Keep access after you sign out (until you revoke it)",
                "online_access": "Keep access while you are signed in"}.get(scope, scope)
    what = "all resource types" if s.type == "*" else s.type
    perms = ", ".join(_PERM_WORDS[p] for p in "cruds" if p in s.perms)
    whose = {"patient": "of the patient in context", "user": "you may access",
             "system": "of every patient"}[s.context]
    extra = f" (only where {', '.join(f'{k} = {v}' for k, v in s.query)})" if s.query else ""
    return f"{perms.capitalize()} {what} {whose}{extra}"


def approve_page(rid: str, client_name: str, username: str, scopes: list[str],
                 patients: list[tuple[str, str]] | None, error: str | None = None,
                 emergency: str | None = None) -> str:
    alert = f'<p class="alert" role="alert">{escape(error)}</p>' if error else ""
    if emergency is not None:  # break-glass: the professional names the patient (id) they need in an emergency
        alert += (f'<p class="alert" role="alert"><strong>Emergency access (break-glass)</strong>: reason given: '
                  f'{escape(emergency)}. This access is traced and the patient is informed.</p>')
    items = "".join(f"<li><code>{escape(s)}</code>: {escape(describe_scope(s))}</li>" for s in scopes)
    picker = ""
    if patients is not None:
        if patients:
            options = "".join(
                f'<div><input type="radio" id="p{i}" name="patient" value="{escape(pid)}" {"checked" if i == 0 else ""}>'
                f'<label for="p{i}" style="display:inline;font-weight:normal">{escape(label)}</label></div>'
                for i, (pid, label) in enumerate(patients))
            picker = f"<fieldset><legend>Choose the patient</legend>{options}</fieldset>"
        elif emergency is None:
            picker = '<p class="alert" role="alert">You have access to no patient record.</p>'
        if emergency is not None:
            picker += ('<label for="patient-id">Patient (record id) for emergency access</label>'
                       '<input id="patient-id" name="patient" type="text" autocomplete="off">')
    return _page("Allow access?", f"""{alert}
<p>Signed in as <strong>{escape(username)}</strong>.</p>
<p>The application <strong>{escape(client_name)}</strong> asks for:</p>
<ul>{items}</ul>
<form method="post" action="approve">
<input type="hidden" name="rid" value="{escape(rid)}">
{picker}
<button type="submit" name="decision" value="approve">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>""")


def error_page(title: str, message: str) -> str:
    return _page(title, f'<p class="alert" role="alert">{escape(message)}</p>')
