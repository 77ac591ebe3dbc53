"""The records, accounts and apps the authorization tests share (built once per session).

Two patients: P1 (Hélène, whose GP is Dr Martin) and P2 (Jérôme, no GP). Each has an open shared record
(a record-creation Consent) and documents; P1 has one discharge summary (LOINC 18842-5) and one lab
report (11502-2) so granular scopes can be told apart. P1 authorized Dr Martin; P2 authorized nobody.
The seeding and backend clients are operator services (not bound by consent): these tests are about
SMART scopes; tests/test_consent*.py are about consent.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from tests.auth_helpers import (
    add_client,
    add_user,
    backend_token,
    ec_key,
    fhir_client,
    public_jwks,
    rsa_key,
)
from tests.dmp import authorization, record_consent

LOINC = "http://loinc.org"
RPPS = "10000000009"  # 11 digits, Luhn-valid
CONF_SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"  # a client secret has at least 32 characters
APP_SCOPES = ("openid fhirUser profile launch launch/patient offline_access online_access "
              "patient/*.cruds user/*.cruds patient/*.read user/*.read")


@dataclass
class World:
    server: object
    ids: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    admin_token: str = ""

    def __getattr__(self, name):  # world.p1, world.doc_p2 …
        ids = self.__dict__.get("ids", {})
        if name in ids:
            return ids[name]
        raise AttributeError(name)


def _doc(patient: str, code: str, author: str | None = None) -> dict:
    d = {"resourceType": "DocumentReference", "status": "current",
         "type": {"coding": [{"system": LOINC, "code": code}]},
         "category": [{"coding": [{"system": LOINC, "code": code}]}],
         "subject": {"reference": f"Patient/{patient}"},
         "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/x"}}]}
    if author:
        d["author"] = [{"reference": author}]
    return d


def build_world(server) -> World:
    w = World(server)
    w.keys["seeder"] = rsa_key()
    add_client(server, "seeder", "confidential-asymmetric", "system/*.cruds", redirect_uris=(),
               jwks=public_jwks(w.keys["seeder"]), operator=True)
    seed = backend_token(server, "seeder", w.keys["seeder"], "system/*.cruds")["access_token"]
    w.admin_token = seed
    with fhir_client(server, seed) as c:
        def create(resource: dict) -> str:
            r = c.post(f"/{resource['resourceType']}", json=resource, headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 201, r.text
            return r.json()["id"]

        w.ids["pr1"] = create({"resourceType": "Practitioner", "name": [{"family": "Martin"}],
                               "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": RPPS}]})
        w.ids["p1"] = create({"resourceType": "Patient", "name": [{"family": "Dupont", "given": ["Hélène"]}],
                              "generalPractitioner": [{"reference": f"Practitioner/{w.ids['pr1']}"}]})
        w.ids["p2"] = create({"resourceType": "Patient", "name": [{"family": "Durand", "given": ["Jérôme"]}]})
        w.ids["record_p1"] = create(record_consent(w.ids["p1"]))
        w.ids["record_p2"] = create(record_consent(w.ids["p2"]))
        w.ids["doc_p1"] = create(_doc(w.ids["p1"], "18842-5"))
        w.ids["lab_p1"] = create(_doc(w.ids["p1"], "11502-2"))
        w.ids["doc_p2"] = create(_doc(w.ids["p2"], "18842-5"))
        w.ids["consent_p1"] = create(authorization(w.ids["p1"], [f"Practitioner/{w.ids['pr1']}"]))
        w.ids["consent_p2"] = w.ids["record_p2"]
        w.ids["bin_p1"] = create({"resourceType": "Binary", "contentType": "text/plain",
                                  "securityContext": {"reference": f"Patient/{w.ids['p1']}"},
                                  "data": base64.b64encode(b"hello").decode()})
        w.ids["bin_p2"] = create({"resourceType": "Binary", "contentType": "text/plain",
                                  "securityContext": {"reference": f"Patient/{w.ids['p2']}"},
                                  "data": base64.b64encode(b"hello").decode()})
        # a second version of P2's document, so vread and history have something to show
        r = c.get(f"/DocumentReference/{w.ids['doc_p2']}")
        body = r.json()
        body["description"] = "v2"
        assert c.put(f"/DocumentReference/{w.ids['doc_p2']}", json=body,
                     headers={"Content-Type": "application/fhir+json"}).status_code == 200

    add_user(server, "helene", "patient", f"Patient/{w.ids['p1']}", name="Hélène Dupont")
    add_user(server, "jerome", "patient", f"Patient/{w.ids['p2']}", name="Jérôme Durand")
    add_user(server, "dr.martin", "practitioner", f"Practitioner/{w.ids['pr1']}", rpps=RPPS,
             name="Dr Martin")
    add_user(server, "admin", "admin", name="Administrator")
    add_client(server, "app", "public", APP_SCOPES, name="Mon Dossier")
    add_client(server, "conf-app", "confidential-symmetric", APP_SCOPES, secret=CONF_SECRET)
    w.keys["backend"] = rsa_key()
    w.keys["backend-es"] = ec_key()
    add_client(server, "backend", "confidential-asymmetric", "system/DocumentReference.rs system/Patient.read",
               redirect_uris=(), jwks=public_jwks(w.keys["backend"]), operator=True)
    add_client(server, "backend-es", "confidential-asymmetric", "system/*.rs", redirect_uris=(),
               jwks=public_jwks(w.keys["backend-es"]), operator=True)
    return w
