"""The example DMP resources in examples/: valid, French, internally consistent, and loadable.

They are loaded three ways, as a user would: one create per resource in dependency order (the
test's own loader, then examples/load.py as a subprocess), and the transaction Bundle (on the
engine with multi-document transactions).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LOAD_SCRIPT = EXAMPLES / "load.py"
ORDER = ["organization.json", "practitioner.json", "practitioner-role.json", "patient.json", "binary.json",
         "document-reference.json"]
FHIR_JSON = "application/fhir+json"
HEADERS = {"Content-Type": FHIR_JSON}
INS_NIR_SYSTEMS = {"urn:oid:1.2.250.1.213.1.4.8", "urn:oid:1.2.250.1.213.1.4.10"}  # INS-NIR, INS-NIR-TEST
RPPS_SYSTEM = "https://rpps.esante.gouv.fr"
IDNPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
FINESS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"
CREATED_LINE = re.compile(r"^created (?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})  <- (?P<source>\S+)", re.M)


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def by_type() -> dict[str, dict]:
    return {example(name)["resourceType"]: example(name) for name in ORDER}


def identifier(resource: dict, system: str | set[str]) -> dict:
    systems = {system} if isinstance(system, str) else system
    found = [i for i in resource.get("identifier", []) if i.get("system") in systems]
    assert len(found) == 1, (systems, resource.get("identifier"))
    return found[0]


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def rewrite(node, mapping: dict[str, str]):
    if isinstance(node, dict):
        return {k: (mapping.get(v, v) if k in ("reference", "url") and isinstance(v, str) else rewrite(v, mapping))
                for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite(item, mapping) for item in node]
    return node


def references(node, path: str = "") -> list[tuple[str, str]]:
    """(path, value) of every Reference.reference and Attachment.url in a resource."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str) and (k == "reference" or (k == "url" and path.endswith(".attachment"))):
                out.append((f"{path}.{k}", v))
            else:
                out += references(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out += references(item, f"{path}[{i}]")
    return out


def without_server_fields(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def raw_binary(client, ref: str) -> bytes:
    r = client.get(f"/{ref}", headers={"Accept": "application/pdf"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/pdf")
    return r.content


def assert_attachment_matches(attachment: dict, content: bytes) -> None:
    assert attachment["size"] == len(content)
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(content).digest()).decode("ascii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_loader(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOAD_SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


# ---- the files themselves ----------------------------------------------------------------------

def test_every_example_file_is_accounted_for():
    files = sorted(p.name for p in EXAMPLES.glob("*.json"))
    assert files == sorted(ORDER + ["transaction-bundle.json"])
    for name in ORDER:
        resource = example(name)
        assert resource["id"].startswith("example-"), name


def test_patient_has_a_valid_ins_nir_and_french_traits():
    patient = example("patient.json")
    ins = identifier(patient, INS_NIR_SYSTEMS)
    nir = ins["value"]
    assert re.fullmatch(r"[12]\d{12}\d{2}", nir), nir
    assert int(nir[13:]) == 97 - int(nir[:13]) % 97, "NIR key"
    # The NIR agrees with the identity traits: sex, year and month of birth.
    assert nir[0] == {"male": "1", "female": "2"}[patient["gender"]]
    assert nir[1:3] == patient["birthDate"][2:4] and nir[3:5] == patient["birthDate"][5:7]
    assert ins["type"]["coding"][0]["code"] == "INS-NIR"
    official = [n for n in patient["name"] if n["use"] == "official"]
    assert official and any(not s.isascii() for s in [official[0]["family"], *official[0]["given"]])
    address = patient["address"][0]
    assert address["country"] == "FRA" and re.fullmatch(r"\d{5}", address["postalCode"])
    phones = [t["value"] for t in patient["telecom"] if t["system"] == "phone"]
    assert phones and all(p.startswith("+33 ") for p in phones)


def test_professional_and_organization_identifiers():
    practitioner, organization = example("practitioner.json"), example("organization.json")
    rpps = identifier(practitioner, RPPS_SYSTEM)["value"]
    assert re.fullmatch(r"\d{11}", rpps) and luhn_valid(rpps), rpps
    assert identifier(practitioner, IDNPS_SYSTEM)["value"] == "8" + rpps
    finess = identifier(organization, FINESS_SYSTEM)["value"]
    assert re.fullmatch(r"\d{9}", finess) and luhn_valid(finess), finess


def test_binary_is_a_well_formed_pdf_described_by_the_document_reference():
    binary, doc = example("binary.json"), example("document-reference.json")
    pdf = base64.b64decode(binary["data"], validate=True)
    assert pdf.startswith(b"%PDF-1.") and pdf.rstrip().endswith(b"%%EOF")
    # The cross-reference table points at each object: a PDF reader can open it without repairing it.
    startxref = int(pdf.rsplit(b"startxref", 1)[1].split()[0])
    assert pdf[startxref:].startswith(b"xref")
    rows = pdf[startxref:].split(b"trailer", 1)[0].splitlines()[3:]
    offsets = [int(row.split()[0]) for row in rows if row.strip().endswith(b"n")]
    assert offsets
    for number, offset in enumerate(offsets, 1):
        assert pdf[offset:].startswith(b"%d 0 obj" % number), number
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"] == binary["contentType"] == "application/pdf"
    assert attachment["url"] == f"Binary/{binary['id']}"
    assert_attachment_matches(attachment, pdf)
    assert doc["type"]["coding"][0] == {"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}


def test_examples_refer_only_to_each_other():
    ids = {f"{r['resourceType']}/{r['id']}" for r in (example(n) for n in ORDER)}
    for name in ORDER:
        for path, value in references(example(name)):
            assert value in ids, (name, path, value)
    assert {name for name in ORDER if references(example(name))} == set(ORDER) - {"organization.json",
                                                                                 "practitioner.json"}


def test_transaction_bundle_holds_the_same_resources():
    bundle = example("transaction-bundle.json")
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    entries = bundle["entry"]
    full_urls = [e["fullUrl"] for e in entries]
    assert len(set(full_urls)) == len(ORDER) == len(entries)
    assert all(re.fullmatch(r"urn:uuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", u) for u in full_urls)
    urn_of = {f"{e['resource']['resourceType']}/{example(n)['id']}": e["fullUrl"] for n, e in zip(ORDER, entries)}
    for name, entry in zip(ORDER, entries):
        resource = example(name)
        assert entry["request"] == {"method": "POST", "url": resource["resourceType"]}
        assert "id" not in entry["resource"]
        # identical to the individual file once its references point at the bundle's fullUrls
        assert entry["resource"] == rewrite(without_server_fields(resource), urn_of), name
        for _, value in references(entry["resource"]):
            assert value in full_urls, (name, value)


# ---- through the API -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ORDER)
def test_each_example_passes_validate(fhir, name):
    resource = example(name)
    r = fhir.post(f"/{resource['resourceType']}/$validate", json=resource, headers=HEADERS)
    assert r.status_code == 200, r.text
    issues = r.json()["issue"]
    assert not [i for i in issues if i["severity"] in ("error", "fatal")], issues
    # the same file with one bad value is refused, so the check above means something
    broken = {**resource, "meta": {"lastUpdated": "le 14 mars"}}
    r = fhir.post(f"/{resource['resourceType']}/$validate", json=broken, headers=HEADERS)
    assert r.status_code == 200, r.text
    assert any(i["severity"] == "error" for i in r.json()["issue"]), r.text


# The examples describe one patient (one INS: one record), so each load goes to a server of its own.
@pytest.fixture
def fresh(ferretdb_uri):
    s = start_server(ferretdb_uri)
    yield s
    stop_server(s)


@pytest.fixture(params=["ferretdb", "mongoeco"])
def fresh_any(request):
    s = start_server(request.getfixturevalue("ferretdb_uri" if request.param == "ferretdb" else "mongoeco_uri"))
    yield s
    stop_server(s)


@pytest.fixture
def fresh_fhir(fresh):
    with fresh.client() as c:
        yield c


def test_load_each_example_in_dependency_order_and_read_back(fresh_fhir):
    fhir = fresh_fhir
    mapping: dict[str, str] = {}
    sent: dict[str, dict] = {}
    for name in ORDER:
        resource = example(name)
        body = rewrite(without_server_fields(resource), mapping)
        r = fhir.post(f"/{resource['resourceType']}", json=body, headers=HEADERS)
        assert r.status_code == 201, (name, r.text)
        created = r.json()
        assert created["id"] != resource["id"]  # the server assigns ids on create
        ref = f"{resource['resourceType']}/{created['id']}"
        mapping[f"{resource['resourceType']}/{resource['id']}"] = ref
        sent[ref] = body

    for ref, body in sent.items():
        r = fhir.get(f"/{ref}")
        assert r.status_code == 200, r.text
        assert without_server_fields(r.json()) == body, ref
        for path, value in references(body):
            assert value in sent, (ref, path, value)  # rewritten to a resource created above
            assert fhir.get(f"/{value}").status_code == 200

    doc = fhir.get(f"/{mapping['DocumentReference/example-cr-consultation']}").json()
    assert doc["subject"]["reference"] == mapping["Patient/example-emilie-lefevre"]
    attachment = doc["content"][0]["attachment"]
    assert attachment["url"] == mapping["Binary/example-cr-consultation-pdf"]
    content = raw_binary(fhir, attachment["url"])
    assert content == base64.b64decode(example("binary.json")["data"])
    assert_attachment_matches(attachment, content)
    patient = fhir.get(f"/{mapping['Patient/example-emilie-lefevre']}").json()
    assert patient["name"][0]["given"][0] == "Émilie"  # accents survive the round trip


def test_transaction_bundle_creates_everything_with_rewritten_references(fresh_any):
    any_fhir = fresh_any.client()
    bundle = example("transaction-bundle.json")
    r = any_fhir.post("", json=bundle, headers=HEADERS)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201"] * len(ORDER)
    real_ref = {}  # fullUrl -> Type/id
    for entry, result in zip(bundle["entry"], out["entry"]):
        rtype = entry["resource"]["resourceType"]
        rid = result["resource"]["id"]
        assert f"/{rtype}/{rid}/_history/1" in result["response"]["location"]
        real_ref[entry["fullUrl"]] = f"{rtype}/{rid}"

    for entry in bundle["entry"]:
        ref = real_ref[entry["fullUrl"]]
        stored = any_fhir.get(f"/{ref}")
        assert stored.status_code == 200, stored.text
        stored = stored.json()
        assert "urn:uuid:" not in json.dumps(stored)
        # every reference now names the resource created from the entry it pointed at, and resolves
        assert without_server_fields(stored) == rewrite(entry["resource"], real_ref)
        for path, value in references(stored):
            assert value in real_ref.values(), (ref, path, value)
            assert any_fhir.get(f"/{value}").status_code == 200

    doc_ref = next(v for v in real_ref.values() if v.startswith("DocumentReference/"))
    attachment = any_fhir.get(f"/{doc_ref}").json()["content"][0]["attachment"]
    assert attachment["url"].startswith("Binary/")
    assert_attachment_matches(attachment, raw_binary(any_fhir, attachment["url"]))


# ---- examples/load.py ----------------------------------------------------------------------------

def _created(stdout: str) -> list[tuple[str, str, str]]:
    return [(m["type"], m["id"], m["source"]) for m in CREATED_LINE.finditer(stdout)]


def test_load_script_creates_everything_in_order(fresh, fresh_fhir):
    server, fhir = fresh, fresh_fhir
    proc = run_loader("--base", server.fhir_base)
    assert proc.returncode == 0, proc.stderr
    created = _created(proc.stdout)
    assert [source for _, _, source in created] == ORDER
    assert [t for t, _, _ in created] == [example(n)["resourceType"] for n in ORDER]
    ids = {t: i for t, i, _ in created}
    doc = fhir.get(f"/DocumentReference/{ids['DocumentReference']}")
    assert doc.status_code == 200, doc.text
    doc = doc.json()
    assert doc["subject"]["reference"] == f"Patient/{ids['Patient']}"
    assert doc["author"][0]["reference"] == f"PractitionerRole/{ids['PractitionerRole']}"
    assert doc["custodian"]["reference"] == f"Organization/{ids['Organization']}"
    assert doc["content"][0]["attachment"]["url"] == f"Binary/{ids['Binary']}"
    role = fhir.get(f"/PractitionerRole/{ids['PractitionerRole']}").json()
    assert role["practitioner"]["reference"] == f"Practitioner/{ids['Practitioner']}"
    assert_attachment_matches(doc["content"][0]["attachment"], raw_binary(fhir, f"Binary/{ids['Binary']}"))
    assert f"{server.fhir_base}/DocumentReference/{ids['DocumentReference']}" in proc.stdout


def test_load_script_validate_mode(server):
    proc = run_loader("--base", server.fhir_base, "--validate")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("valid ") == len(ORDER)
    assert "created" not in proc.stdout


def test_load_script_transaction(fresh_any):
    srv, fhir_txn = fresh_any, fresh_any.client()
    proc = run_loader("--base", srv.fhir_base, "--transaction")
    assert proc.returncode == 0, proc.stderr
    created = _created(proc.stdout)
    assert [t for t, _, _ in created] == [example(n)["resourceType"] for n in ORDER]
    assert [s for _, _, s in created] == [e["fullUrl"] for e in example("transaction-bundle.json")["entry"]]
    for rtype, rid, _ in created:
        assert fhir_txn.get(f"/{rtype}/{rid}").status_code == 200


def test_load_script_reports_an_unreachable_server():
    proc = run_loader("--base", f"http://127.0.0.1:{free_port()}/fhir")
    assert proc.returncode == 1
    assert "cannot reach" in proc.stderr and "make run" in proc.stderr
    assert "Traceback" not in proc.stderr
