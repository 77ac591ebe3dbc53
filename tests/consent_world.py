"""A record world for the patient-consent tests: one server (two workers) enforcing SMART scopes and
patient consent, with these people and records (built once per session, through the API):

* Alice (patient A, INS known): open record. Her documents: `doc_a` (by Dr Auth), `masked_a` (by
  Dr Author, masked by Alice), `hidden_a` (by Dr Auth, hidden from Alice until announced),
  `own_a` (written by Alice in her personal space), with a Binary `bin_a`.
  Her consents: Dr Auth (read, add), Dr GP (her general practitioner), Dr Author, Organization O
  (read); Dr Blocked blocked (and permitted again *after* the block); Dr Expired (period over);
  Dr Revoked (inactive); Dr ReadOnly (read only).
* Bob (patient B): open record, `doc_b`; refused emergency access; authorized Dr Auth.
* Carol (patient C): no record. Dan (patient D): closed record, `doc_d` (written while open).
* Professionals as users (user/*.cruds): the doctors above, Dr None (no authorization), Dr Org (a
  PractitionerRole in Organization O), Dr BTG (may declare break-glass).
* Backend clients (system/*.cruds): `org-o` acting for Organization O, `org-p` for Organization P,
  `operator` (an operator service).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tests.auth_helpers import add_client, add_user, backend_token, fhir_client, public_jwks, rsa_key, user_token
from tests.dmp import authorization, block, document, emergency_refusal, record_consent
from tests.helpers import new_ins

FHIR = {"Content-Type": "application/fhir+json"}
BACKEND_RENEW_SECONDS = 120  # well before the 300 s a backend token lives
APP_SCOPES = "openid fhirUser launch launch/patient user/*.cruds patient/*.cruds offline_access"
RPPS = {  # Luhn-valid 11-digit numbers
    "auth": "10000000009", "gp": "10001234565", "author": "10003456786", "blocked": "10007654329",
    "expired": "10001112225", "revoked": "10002223331", "readonly": "10004445553", "none": "10005556669",
    "org": "10006667771", "btg": "10008889997",
}


@dataclass
class ConsentWorld:
    server: object
    ids: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    ins: dict = field(default_factory=dict)
    # backend clients' keys and when their token was issued: backend tokens live at most 300 s
    # (SMART Backend Services), shorter than a session using this world, so they are renewed
    backends: dict = field(default_factory=dict)

    def __getattr__(self, name):
        ids = self.__dict__.get("ids", {})
        if name in ids:
            return ids[name]
        raise AttributeError(name)

    def client(self, who: str):
        if who in self.backends:
            key, scope, issued = self.backends[who]
            if time.monotonic() - issued > BACKEND_RENEW_SECONDS:
                self.backend(who, key, scope)
        return fhir_client(self.server, self.tokens[who] if who in self.tokens else who)

    def backend(self, who: str, key, scope: str) -> None:
        """(Re)issue a backend client's token."""
        issued = time.monotonic()
        self.tokens[who] = backend_token(self.server, who, key, scope)["access_token"]
        self.backends[who] = (key, scope, issued)

    def fresh_patient(self, *, record: bool = True, gp: str | None = None, user: bool = True) -> tuple[str, str]:
        """A new patient (open record unless `record` is False) and, with `user`, their token."""
        body: dict = {"resourceType": "Patient", "name": [{"family": "Fresh"}],
                      "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": new_ins()}]}
        if gp:
            body["generalPractitioner"] = [{"reference": gp}]
        with self.client("operator") as op:
            pid = op.post("/Patient", json=body, headers=FHIR).json()["id"]
            if record:
                assert op.post("/Consent", json=record_consent(pid), headers=FHIR).status_code == 201
        token = ""
        if user:
            add_user(self.server, f"p-{pid}", "patient", f"Patient/{pid}")
            token = user_token(self.server, "app", f"p-{pid}", "launch/patient patient/*.cruds")["access_token"]
        return pid, token

    def pr(self, who: str) -> str:
        return f"Practitioner/{self.ids['pr_' + who]}"


def _luhn_fix(ten: str) -> str:
    for d in "0123456789":
        digits, total = ten + d, 0
        for i, ch in enumerate(reversed(digits)):
            n = int(ch) * (2 if i % 2 else 1)
            total += n - 9 if n > 9 else n
        if total % 10 == 0:
            return digits
    raise AssertionError


def build_consent_world(server) -> ConsentWorld:
    w = ConsentWorld(server)
    key = rsa_key()
    add_client(server, "operator", "confidential-asymmetric", "system/*.cruds", redirect_uris=(),
               jwks=public_jwks(key), operator=True)
    w.backend("operator", key, "system/*.cruds")
    rpps = {k: _luhn_fix(v[:10]) for k, v in RPPS.items()}
    with w.client("operator") as op:
        def create(resource: dict) -> str:
            r = op.post(f"/{resource['resourceType']}", json=resource, headers=FHIR)
            assert r.status_code == 201, r.text
            return r.json()["id"]

        for who in rpps:
            w.ids[f"pr_{who}"] = create({"resourceType": "Practitioner", "name": [{"family": f"Dr {who.title()}"}],
                                         "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": rpps[who]}]})
        w.ids["org_o"] = create({"resourceType": "Organization", "name": "Clinique O"})
        w.ids["org_p"] = create({"resourceType": "Organization", "name": "Clinique P"})
        w.ids["role_org"] = create({"resourceType": "PractitionerRole",
                                    "practitioner": {"reference": f"Practitioner/{w.pr_org}"},
                                    "organization": {"reference": f"Organization/{w.org_o}"}})

        def patient(name: str, gp: str | None = None) -> str:
            w.ins[name] = new_ins()
            body = {"resourceType": "Patient", "name": [{"family": name.title()}],
                    "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": w.ins[name]}]}
            if gp:
                body["generalPractitioner"] = [{"reference": f"Practitioner/{gp}"}]
            return create(body)

        w.ids["a"] = patient("alice", gp=w.pr_gp)
        w.ids["b"] = patient("bob")
        w.ids["c"] = patient("carol")
        w.ids["d"] = patient("dan")
        for p in ("a", "b", "d"):
            w.ids[f"record_{p}"] = create(record_consent(w.ids[p]))
        a, pr = w.a, (lambda who: f"Practitioner/{w.ids['pr_' + who]}")
        w.ids["c_auth"] = create(authorization(a, [pr("auth")]))
        w.ids["c_gp"] = create(authorization(a, [pr("gp")]))
        w.ids["c_author"] = create(authorization(a, [pr("author")]))
        w.ids["c_org"] = create(authorization(a, [f"Organization/{w.org_o}"], actions=["read"]))
        w.ids["c_block"] = create(block(a, pr("blocked")))
        w.ids["c_after_block"] = create(authorization(a, [pr("blocked")]))  # recorded after: the block still wins
        w.ids["c_expired"] = create(authorization(a, [pr("expired")], start="2020-01-01", end="2021-01-01"))
        w.ids["c_revoked"] = create(authorization(a, [pr("revoked")], status="inactive"))
        w.ids["c_readonly"] = create(authorization(a, [pr("readonly")], actions=["read"]))
        w.ids["c_b_auth"] = create(authorization(w.b, [pr("auth")]))
        w.ids["c_b_btg"] = create(emergency_refusal(w.b))
        w.ids["bin_a"] = create({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8=",
                                 "securityContext": {"reference": f"Patient/{a}"}})
        w.ids["doc_a"] = create(document(a, author=pr("auth")))
        w.ids["masked_a"] = create(document(a, author=pr("author"), labels=["masked"]))
        w.ids["hidden_a"] = create(document(a, author=pr("auth"), labels=["hidden-from-patient"]))
        w.ids["own_a"] = create(document(a, author=f"Patient/{a}", patient_authored=True))
        w.ids["doc_b"] = create(document(w.b, author=pr("auth")))
        w.ids["doc_d"] = create(document(w.d, author=pr("auth")))
        closed = record_consent(w.d, status="inactive")
        r = op.put(f"/Consent/{w.record_d}", json={**closed, "id": w.record_d}, headers=FHIR)
        assert r.status_code == 200, r.text

    add_client(server, "app", "public", APP_SCOPES, name="DMP app")
    for who in rpps:
        add_user(server, f"dr.{who}", "practitioner", f"Practitioner/{w.ids['pr_' + who]}", rpps=rpps[who],
                 break_glass=(who in ("btg", "blocked")))
    add_user(server, "alice", "patient", f"Patient/{w.a}")
    add_user(server, "bob", "patient", f"Patient/{w.b}")
    add_user(server, "dan", "patient", f"Patient/{w.d}")
    add_user(server, "admin", "admin", name="Administrator")
    for who in rpps:
        w.tokens[who] = user_token(server, "app", f"dr.{who}", "openid fhirUser user/*.cruds")["access_token"]
    w.tokens["alice"] = user_token(server, "app", "alice", "launch/patient patient/*.cruds")["access_token"]
    w.tokens["bob"] = user_token(server, "app", "bob", "launch/patient patient/*.cruds")["access_token"]
    w.tokens["dan"] = user_token(server, "app", "dan", "launch/patient patient/*.cruds")["access_token"]
    w.tokens["admin"] = user_token(server, "app", "admin", "openid fhirUser user/*.cruds")["access_token"]
    for org in ("o", "p"):
        k = rsa_key()
        add_client(server, f"org-{org}", "confidential-asymmetric", "system/*.cruds", redirect_uris=(),
                   jwks=public_jwks(k), organization=f"Organization/{w.ids['org_' + org]}")
        w.backend(f"org-{org}", k, "system/*.cruds")
    return w
