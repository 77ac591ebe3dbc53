"""Small builders shared by the HTTP tests."""

from __future__ import annotations

import uuid

FHIR_JSON = "application/fhir+json"
JSON_HEADERS = {"Content-Type": FHIR_JSON}


def patient(**extra) -> dict:
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "2061275111005" + "64"}],
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
