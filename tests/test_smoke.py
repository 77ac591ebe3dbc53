def test_create_then_read(fhir):
    r = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "female"},
                  headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r2 = fhir.get(f"/Patient/{pid}")
    assert r2.status_code == 200
    assert r2.json()["gender"] == "female"
