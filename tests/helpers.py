"""Small builders shared by the HTTP tests."""

from __future__ import annotations

import uuid

FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": FHIR_JSON}


def new_nir() -> str:
    """A random well-formed NIR (13 characters), Corsican departments included now and then."""
    import random

    rnd = random.Random(uuid.uuid4().int)
    dept = rnd.choice(["75", "69", "2A", "2B", "13", "33"])
    return (f"{rnd.choice('12')}{rnd.randint(0, 99):02d}{rnd.randint(1, 12):02d}{dept}"
            f"{rnd.randint(1, 999):03d}{rnd.randint(1, 999):03d}")


def new_ins() -> str:
    """A random valid INS: NIR + key (fhir_server's own key function is not used: the rule is the spec's)."""
    nir = new_nir()
    digits = nir[:5] + {"2A": "19", "2B": "18"}.get(nir[5:7], nir[5:7]) + nir[7:]
    return nir + f"{97 - int(digits) % 97:02d}"


def patient(**extra) -> dict:
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": new_ins()}],
        "name": [{"family": "Dupont", "given": ["Hélène"]}],
        "gender": "female",
        "birthDate": "1985-02-03",
    }
    body.update(extra)
    return body


def create(client, resource: dict) -> dict:
    r = client.post(f"/{resource['resourceType']}", json=resource, headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    return r.json()


def new_id() -> str:
    return "t-" + uuid.uuid4().hex[:20]


def outcome_codes(response) -> list[str]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i["code"] for i in body["issue"]]


def assert_outcome(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(i.get("diagnostics") for i in body["issue"])
    if code is not None:
        assert code in [i["code"] for i in body["issue"]], body
    assert "Traceback" not in response.text
    return body
