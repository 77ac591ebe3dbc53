"""A standalone launch by a client nobody here wrote: SMART's own Python client, fhirclient (PyPI).

fhirclient discovers the OAuth endpoints from the CapabilityStatement's security extension, sends
PKCE S256, state and aud, exchanges the code and reads with the token. The browser part (sign-in
and approval pages) is walked with httpx, as a user would with a browser."""

from __future__ import annotations

import re
from html import unescape

import httpx
from fhirclient import client as smart_client
from fhirclient.models.documentreference import DocumentReference
from fhirclient.models.patient import Patient

from tests.auth_helpers import CALLBACK, PASSWORD


def _browser(server, authorize_url: str, username: str, patient: str | None = None) -> str:
    with httpx.Client(timeout=60) as browser:
        page = browser.get(authorize_url)
        assert page.status_code == 200, page.text
        rid = unescape(re.search(r'name="rid" value="([^"]+)"', page.text).group(1))
        page = browser.post(server.base + "/auth/login", data={"rid": rid, "username": username, "password": PASSWORD})
        assert page.status_code == 200, page.text
        form = {"rid": rid, "decision": "approve", **({"patient": patient} if patient else {})}
        done = browser.post(server.base + "/auth/approve", data=form)
        assert done.status_code == 302
        return done.headers["location"]


def _launch(server, username, scope, patient=None):
    smart = smart_client.FHIRClient(settings={"app_id": "app", "api_base": server.fhir_base,
                                              "redirect_uri": CALLBACK, "scope": scope})
    url = smart.authorize_url
    assert url.startswith(server.base + "/auth/authorize?")
    smart.handle_callback(_browser(server, url, username, patient))
    assert smart.ready
    return smart


def test_patient_standalone_launch_reads_own_record(auth_world):
    w = auth_world
    smart = _launch(w.server, "helene", "openid fhirUser launch/patient patient/*.rs")
    assert smart.patient_id == w.p1
    patient = Patient.read(w.p1, smart.server)
    assert patient.name[0].family == "Dupont"
    doc = DocumentReference.read(w.doc_p1, smart.server)
    assert doc.subject.reference == f"Patient/{w.p1}"
    try:
        Patient.read(w.p2, smart.server)
        raise AssertionError("another patient's record was readable")
    except Exception as exc:
        assert "404" in str(exc) or getattr(getattr(exc, "response", None), "status_code", None) == 404


def test_practitioner_standalone_launch_picks_a_patient_they_may_access(auth_world):
    w = auth_world
    smart = _launch(w.server, "dr.martin", "openid fhirUser launch/patient patient/*.rs", patient=w.p1)
    assert smart.patient_id == w.p1
    assert Patient.read(w.p1, smart.server).id == w.p1


def test_practitioner_cannot_pick_a_patient_outside_their_list(auth_world):
    w = auth_world
    smart = smart_client.FHIRClient(settings={"app_id": "app", "api_base": w.server.fhir_base,
                                              "redirect_uri": CALLBACK, "scope": "launch/patient patient/*.rs"})
    with httpx.Client(timeout=60) as browser:
        page = browser.get(smart.authorize_url)
        rid = unescape(re.search(r'name="rid" value="([^"]+)"', page.text).group(1))
        page = browser.post(w.server.base + "/auth/login", data={"rid": rid, "username": "dr.martin",
                                                                 "password": PASSWORD})
        assert w.p1 in page.text and w.p2 not in page.text  # the picker lists only their patients
        refused = browser.post(w.server.base + "/auth/approve", data={"rid": rid, "decision": "approve",
                                                                      "patient": w.p2})
        assert refused.status_code == 200 and "Choose one of the patients" in refused.text
