"""`Patient/{id}/$copy` (issue 11, item 3): the patient's copy of the record as one ZIP, complete
and usable by a person without software of ours.

Expectations: the Bundle holds exactly what `$everything` shows the same caller (the oracle; the
audit trail, which grows with every request, is compared apart); every attachment is a file whose
bytes are the Binary's as the API serves them; every file's SHA-256 is listed; `index.html` opens
in headless Chromium with every document file linked; consent applies (the professional's copy
lacks what the patient masked; someone unauthorized gets 404); the download is audited."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
import zipfile

import pytest

from tests.consent_world import FHIR
from tests.dmp import authorization, document

PDF = b"%PDF-1.4\n" + os.urandom(20_000) + b"\n%%EOF"  # above the inline limit: GridFS
TITLE = "Compte rendu opératoire.pdf"


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


@pytest.fixture(scope="module")
def record(w):
    """A fresh patient with three documents: a PDF in GridFS, inline text, one masked by the
    patient; Dr Auth authorized."""
    pid, token = w.fresh_patient()
    w.tokens[f"p-{pid}"] = token
    with w.client("operator") as op:
        assert op.post("/Consent", json=authorization(pid, [w.pr("auth")]), headers=FHIR).status_code == 201
        r = op.post("/Binary", content=PDF, headers={"Content-Type": "application/pdf",
                                                       "X-Security-Context": f"Patient/{pid}"})
        assert r.status_code == 201, r.text
        pdf_id = r.json()["id"]
        docs = {
            "pdf": document(pid, author=w.pr("auth"), date="2026-03-01T10:00:00Z", content=[
                {"attachment": {"contentType": "application/pdf", "url": f"Binary/{pdf_id}", "title": TITLE}}]),
            "note": document(pid, code="34133-9", author=w.pr("auth"), date="2026-04-02T10:00:00Z",
                             content=[{"attachment": {"contentType": "text/plain", "data": "Qm9uam91ciAhCg==",
                                                      "title": "note.txt"}}]),
            "masked": document(pid, author=w.pr("author"), labels=["masked"], date="2026-02-01T10:00:00Z",
                               content=[{"attachment": {"contentType": "text/plain", "data": "c2VjcmV0Cg==",
                                                        "title": "masked.txt"}}]),
        }
        ids = {}
        for k, d in docs.items():
            r = op.post("/DocumentReference", json=d, headers=FHIR)
            assert r.status_code == 201, r.text
            ids[k] = r.json()["id"]
    return pid, pdf_id, ids


def _download(w, who: str, pid: str) -> zipfile.ZipFile:
    with w.client(who) as c:
        r = c.get(f"/Patient/{pid}/$copy", headers={"X-Request-Id": uuid.uuid4().hex})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"].startswith("attachment;")
    return zipfile.ZipFile(io.BytesIO(r.content))


def _everything(w, who: str, pid: str) -> set[str]:
    found: set[str] = set()
    with w.client(who) as c:
        r = c.get(f"/Patient/{pid}/$everything", params={"_count": "100"})
        while True:
            assert r.status_code == 200, r.text
            found |= {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json().get("entry", [])
                      if e["resource"]["resourceType"] != "AuditEvent"}
            nxt = [link["url"] for link in r.json()["link"] if link["relation"] == "next"]
            if not nxt:
                return found
            r = c.get(nxt[0])


def _bundle_keys(z: zipfile.ZipFile) -> set[str]:
    bundle = json.loads(z.read("record.json"))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
            if e["resource"]["resourceType"] != "AuditEvent"}


def test_the_patient_copy_is_the_record_with_its_files_hashes_and_history(w, record):
    pid, pdf_id, ids = record
    me = f"p-{pid}"
    z = _download(w, me, pid)
    assert z.testzip() is None
    names = set(z.namelist())
    assert {"record.json", "access-history.json", "index.html", "SHA256SUMS", "manifest.json"} <= names
    assert _bundle_keys(z) == _everything(w, me, pid)
    # every attachment as its own file, its bytes as the API serves them
    docs = sorted(n for n in names if n.startswith("documents/"))
    assert len(docs) == 3, docs
    [pdf] = [n for n in docs if n.endswith(".pdf")]
    assert "Compte rendu operatoire" in pdf and pdf.startswith("documents/2026-03-01")
    with w.client(me) as c:
        served = c.get(f"/Binary/{pdf_id}", headers={"Accept": "application/pdf"}).content
    assert z.read(pdf) == served == PDF
    [note] = [n for n in docs if "note" in n]
    assert z.read(note) == "Bonjour !\n".encode()
    # the hashes
    sums = dict(reversed(line.split("  ", 1)) for line in z.read("SHA256SUMS").decode().splitlines())
    assert set(sums) == names - {"SHA256SUMS", "manifest.json"}
    assert all(hashlib.sha256(z.read(n)).hexdigest() == h for n, h in sums.items())
    manifest = json.loads(z.read("manifest.json"))
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == sums
    # the access history: the record's AuditEvents, the operator's writes among them
    history = json.loads(z.read("access-history.json"))
    events = [e["resource"] for e in history["entry"]]
    assert events and all(e["resourceType"] == "AuditEvent" for e in events)
    assert any(f"DocumentReference/{ids['pdf']}/_history/1" in json.dumps(e) for e in events)


def test_a_professional_copy_follows_consent_and_the_unauthorized_get_nothing(w, record):
    pid, _, ids = record
    z = _download(w, "auth", pid)
    keys = _bundle_keys(z)
    assert keys == _everything(w, "auth", pid)
    assert f"DocumentReference/{ids['pdf']}" in keys and f"DocumentReference/{ids['masked']}" not in keys
    assert not [n for n in z.namelist() if "masked" in n]
    with w.client("none") as c:
        r = c.get(f"/Patient/{pid}/$copy")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_the_download_is_audited_for_the_patient(w, record):
    pid, pdf_id, _ = record
    rid = uuid.uuid4().hex
    with w.client(f"p-{pid}") as c:
        assert c.get(f"/Patient/{pid}/$copy", headers={"X-Request-Id": rid}).status_code == 200
        events = c.get("/AuditEvent", params={"patient": pid, "_count": "1000"}).json()["entry"]
    mine = [e["resource"] for e in events if any(x.get("what", {}).get("identifier", {}).get("value") == rid
                                                for x in e["resource"]["entity"])]
    assert len(mine) == 1 and mine[0]["subtype"][0]["code"] == "operation"
    assert any(x.get("name") == "$copy" for x in mine[0]["entity"])
    assert any(x["what"].get("reference", "").startswith(f"Binary/{pdf_id}/_history/") for x in mine[0]["entity"])


def test_index_html_opens_offline_in_chromium_and_links_every_document(w, record, tmp_path):
    pid, _, _ = record
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium package is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    z = _download(w, f"p-{pid}", pid)
    z.extractall(tmp_path)
    files = {n for n in z.namelist() if n.startswith("documents/")}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto((tmp_path / "index.html").as_uri())
            assert "Documents" in page.inner_text("h2 >> nth=0")
            hrefs = set(page.eval_on_selector_all("a", "els => els.map(e => e.getAttribute('href'))"))
            rows = page.locator("table >> nth=0").locator("tbody tr").count()
            page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
        finally:
            browser.close()
    assert files <= hrefs and rows == 3
    assert all(r.startswith("file://") for r in requests)  # offline: nothing fetched from anywhere
    assert (tmp_path / "index.png").stat().st_size > 10_000
