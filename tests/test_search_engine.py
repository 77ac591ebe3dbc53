"""Search end to end on a real engine: index_fields -> FerretDB collection -> compile(parse(...)).

Every query's result ids are compared with tests/search_oracle.py, which evaluates the same parsed
query on the plain resources (https://hl7.org/fhir/R4/search.html semantics). Hypothesis generates
French-flavoured Patients and DocumentReferences and the queries; explicit tests pin the cases the spec
calls out. Uses the lead's `mongo_uri_ferretdb` fixture when tests/conftest.py provides it, otherwise
starts its own FerretDB (FERRETDB_BIN, .tools/bin/ferretdb or /tmp/ferret/bin2/ferretdb).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pymongo = pytest.importorskip("pymongo")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_oracle as oracle  # noqa: E402

from fhir_server.search import SearchError, compile, index_fields, index_specs, parse, resolve, sort_spec  # noqa: E402
from fhir_server.search.prefix import MAX_PREFIX  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
SCALE = float(os.environ.get("SEARCH_EXAMPLES_SCALE", "1"))  # raise for a deeper local run
HYPOTHESIS = settings(
    max_examples=int(60 * SCALE),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=bool(os.environ.get("CI")),
)


# --- engine --------------------------------------------------------------------------------------

def _ferretdb_binary() -> str | None:
    for cand in (os.environ.get("FERRETDB_BIN"), str(ROOT / ".tools/bin/ferretdb"), "/tmp/ferret/bin2/ferretdb",
                 shutil.which("ferretdb")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def search_mongo_uri(request, tmp_path_factory):
    for shared in ("mongo_uri_ferretdb", "ferretdb_uri"):  # the suite's session engine, when there is one
        try:
            uri = request.getfixturevalue(shared)
        except (pytest.FixtureLookupError, pytest.fail.Exception, pytest.skip.Exception):
            continue
        yield uri
        return
    binary = _ferretdb_binary()
    if binary is None:
        pytest.skip("no FerretDB binary (set FERRETDB_BIN or run scripts/build-ferretdb.sh)")
    state = tmp_path_factory.mktemp("ferretdb-search")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--handler=sqlite", f"--sqlite-url=file:{state}/", f"--listen-addr=127.0.0.1:{port}",
         "--telemetry=disable", "--debug-addr=-", f"--state-dir={state}", "--log-level=error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}/"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
    try:
        for _ in range(60):
            try:
                client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                time.sleep(0.2)
        else:
            pytest.fail("FerretDB did not start")
        yield uri
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def db(search_mongo_uri):
    client = pymongo.MongoClient(search_mongo_uri)
    name = f"search_{uuid.uuid4().hex[:8]}"
    database = client[name]
    for rtype in ("Patient", "DocumentReference", "AuditEvent"):
        database[rtype].create_indexes(index_specs(rtype))
    yield database
    client.drop_database(name)
    client.close()


def _lu(resource: dict) -> datetime:
    text = resource.get("meta", {}).get("lastUpdated")
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else NOW


def load(db, resources: list[dict]) -> None:
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for rtype in ("Patient", "DocumentReference", "AuditEvent"):
        db[rtype].delete_many({})
        docs = [{"_id": r["id"], "_v": 1, "_lu": _lu(r), "_del": False, **index_fields(r)}
                for r in by_type.get(rtype, [])]
        if docs:
            db[rtype].insert_many(docs)


def engine_ids(db, rtype: str, pairs: list[tuple[str, str]]) -> set[str]:
    query = parse(rtype, pairs)
    flt = compile(query, now=NOW)
    return {d["_id"] for d in db[rtype].find(flt, {"_id": 1})}


def oracle_ids(resources: list[dict], rtype: str, pairs: list[tuple[str, str]]) -> set[str]:
    query = parse(rtype, pairs)
    db = {}
    for r in resources:
        db.setdefault(r["resourceType"], []).append(r)
    return {r["id"] for r in db.get(rtype, []) if oracle.matches(r, query, db, now=NOW)}


def check(db, resources, rtype, pairs):
    got = engine_ids(db, rtype, pairs)
    want = oracle_ids(resources, rtype, pairs)
    assert got == want, (pairs, compile(parse(rtype, pairs), now=NOW))
    # the canonical rendering parses back to the same query
    rendered = parse(rtype, pairs).to_query_string()
    from urllib.parse import parse_qsl

    assert parse(rtype, parse_qsl(rendered, keep_blank_values=True)).to_query_string() == rendered
    return got


# --- generators ----------------------------------------------------------------------------------

GIVEN = ["Hélène", "Héloïse", "Zoé", "Chloé", "François", "Jérôme", "Anaïs", "Noël", "Gaëlle", "Ève", "Élodie",
         "Jean-Pierre", "Marie", "Loïc", "Cécile", "Ærwen", "Marie-Édith", "Jean-Baptiste"]
# longer than MAX_PREFIX, sharing their first MAX_PREFIX folded characters or nearly (prefix tokens + regex)
FAMILY = ["Dupont", "Dupond", "Lefèvre", "Lefebvre", "Müller", "Özdemir", "Garçon", "De La Tour", "Ngô", "Durand",
          "Da Silva", "N'Diaye", "Straße", "Dupond-Martin", "Dupond-Martinez", "Saint-Exupéry", "De La Tour du Pin"]
SYSTEMS = ["urn:oid:1.2.250.1.213.1.4.8", "https://rpps.esante.gouv.fr", None]
ID_VALUES = ["123", "456", "1850375", "A,B", "x|y", "a$b", "007"]
LOINC = ["11488-4", "34133-9", "18842-5"]
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def variants(text: str) -> st.SearchStrategy[str]:
    """Ways a user may type `text`: prefixes, other case, without accents."""
    stripped = oracle.insensitive(text)
    return st.sampled_from([text, text.upper(), text.lower(), stripped, stripped.upper(), text[:3], stripped[:2],
                            text[1:4], "zz" + stripped, text[:MAX_PREFIX - 1], stripped[:MAX_PREFIX],
                            text[:MAX_PREFIX + 1].upper(), stripped[:MAX_PREFIX + 3], stripped + "x"])


dates = st.one_of(
    st.integers(1930, 2030).map(str),
    st.tuples(st.integers(1930, 2030), st.integers(1, 12)).map(lambda t: f"{t[0]}-{t[1]:02d}"),
    st.dates(datetime(1930, 1, 1).date(), datetime(2030, 12, 31).date()).map(lambda d: d.isoformat()),
)
TZS = ["Z", "+01:00", "+02:00", "-05:00", "+14:00", "-12:00"]
instants = st.builds(  # whole minutes and the last second are frequent: that is where range bounds meet
    lambda dt, sec, tz, ms: dt.replace(second=dt.second if sec is None else sec).strftime("%Y-%m-%dT%H:%M:%S")
    + (f".{ms:03d}" if ms is not None else "") + tz,
    st.datetimes(datetime(2025, 6, 1), datetime(2027, 6, 1)), st.sampled_from([None, 0, 59]), st.sampled_from(TZS),
    st.one_of(st.none(), st.integers(0, 999), st.just(0)),
)
date_times = st.one_of(dates, instants)


def identifier():
    return st.builds(
        lambda s, v, typed: {k: x for k, x in (
            ("system", s), ("value", v),
            ("type", {"coding": [{"system": V2_0203, "code": "NI"}]} if typed else None),
        ) if x is not None},
        st.sampled_from(SYSTEMS), st.sampled_from(ID_VALUES), st.booleans(),
    )


@st.composite
def patients(draw, n_max=8):
    out = []
    for i in range(draw(st.integers(1, n_max))):
        p = {"resourceType": "Patient", "id": f"p{i}"}
        names = draw(st.lists(st.builds(
            lambda fam, giv: {k: v for k, v in (("family", fam), ("given", giv or None)) if v} or {"family": "Durand"},
            st.one_of(st.none(), st.sampled_from(FAMILY)), st.lists(st.sampled_from(GIVEN), max_size=2),
        ), max_size=2))
        if names:
            p["name"] = names
        ids = draw(st.lists(identifier(), max_size=2))
        if ids:
            p["identifier"] = ids
        bd = draw(st.one_of(st.none(), dates))
        if bd:
            p["birthDate"] = bd
        g = draw(st.one_of(st.none(), st.sampled_from(["male", "female", "other", "unknown"])))
        if g:
            p["gender"] = g
        a = draw(st.one_of(st.none(), st.booleans()))
        if a is not None:
            p["active"] = a
        dec = draw(st.sampled_from([None, ("deceasedBoolean", True), ("deceasedBoolean", False),
                                    ("deceasedDateTime", "2020-01-01")]))
        if dec:
            p[dec[0]] = dec[1]
        out.append(p)
    return out


def token_query(ident: dict) -> st.SearchStrategy[str]:
    def esc(s):
        return s.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")

    system, value = ident.get("system"), ident.get("value")
    forms = [esc(value), f"|{esc(value)}", f"{esc(value)}0"]
    if system:
        forms += [f"{system}|{esc(value)}", f"{system}|", f"{system}|zz"]
    return st.sampled_from(forms)


@st.composite
def patient_query(draw, corpus):
    clauses = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(
            ["string", "token", "birthdate", "gender", "missing", "not", "deceased", "of-type"]))
        if kind == "string":
            words = [s for p in corpus for n in p.get("name", []) for s in [n.get("family")] + n.get("given", []) if s]
            alts = [draw(variants(draw(st.sampled_from(words or ["Dupont"]))))
                    for _ in range(draw(st.integers(1, 2)))]
            alts = [a.replace(",", "\\,") for a in alts]
            mod = draw(st.sampled_from(["", ":exact", ":contains"]))
            name = draw(st.sampled_from(["name", "family", "given"]))
            clauses.append((name + mod, ",".join(alts)))
        elif kind == "token":
            ids = [i for p in corpus for i in p.get("identifier", [])] or [{"value": "123"}]
            alts = [draw(token_query(draw(st.sampled_from(ids)))) for _ in range(draw(st.integers(1, 2)))]
            clauses.append(("identifier", ",".join(alts)))
        elif kind == "birthdate":
            prefix = draw(st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]))
            clauses.append(("birthdate", prefix + draw(dates)))
        elif kind == "gender":
            clauses.append(("gender", draw(st.sampled_from([
                "male", "female,other", "http://hl7.org/fhir/administrative-gender|female",
                "http://hl7.org/fhir/administrative-gender|", "|male", "http://other|male"]))))
        elif kind == "missing":
            name = draw(st.sampled_from(["name", "identifier", "birthdate", "gender", "active", "family"]))
            clauses.append((f"{name}:missing", draw(st.sampled_from(["true", "false"]))))
        elif kind == "not":
            clauses.append(draw(st.sampled_from([("gender:not", "male"), ("active:not", "true"),
                                                 ("identifier:not", "123"), ("gender:not", "male,female")])))
        elif kind == "deceased":
            clauses.append(("deceased", draw(st.sampled_from(["true", "false"]))))
        else:
            clauses.append(("identifier:of-type", f"{V2_0203}|NI|" +
                            draw(st.sampled_from(ID_VALUES)).replace(",", "\\,").replace("|", "\\|")))
    return clauses


@st.composite
def documents(draw, n_max=8):
    out = []
    for i in range(draw(st.integers(1, n_max))):
        status = draw(st.sampled_from(["current", "superseded"]))
        d = {"resourceType": "DocumentReference", "id": f"d{i}", "status": status,
             "content": [{"attachment": {"contentType": "application/pdf"}}],
             "meta": {"lastUpdated": draw(instants.filter(lambda s: True)).replace("+14:00", "Z")}}
        subj = draw(st.one_of(st.none(), st.sampled_from(["Patient/p0", "Patient/p1", "Practitioner/p1", "Group/g1",
                                                          "urn:ins|1", "|2"])))
        if subj and "|" in subj:  # a logical reference: identifier only (R4 references.html#logical)
            system, value = subj.split("|")
            d["subject"] = {"identifier": {k: v for k, v in (("system", system), ("value", value)) if v}}
        elif subj:
            d["subject"] = {"reference": subj}
        t = draw(st.one_of(st.none(), st.sampled_from(LOINC + ["text-only"])))
        if t == "text-only":
            d["type"] = {"text": "Courrier"}
        elif t:
            coding = {"code": t}
            if draw(st.booleans()):
                coding["system"] = "http://loinc.org"
            d["type"] = {"coding": [coding], "text": draw(st.sampled_from(["Compte rendu", "Lettre de sortie"]))}
        dt = draw(st.one_of(st.none(), instants))
        if dt:
            d["date"] = dt
        if draw(st.booleans()):
            d["relatesTo"] = [{"code": draw(st.sampled_from(["replaces", "appends"])),
                               "target": {"reference": f"DocumentReference/d{draw(st.integers(0, 3))}"}}]
        if draw(st.booleans()):
            d["description"] = draw(st.sampled_from(["Compte rendu opératoire", "Échographie", "ordonnance"]))
        if draw(st.booleans()):
            start = draw(dates)
            d["context"] = {"period": {"start": start}} if draw(st.booleans()) else {"period": {"end": start}}
        out.append(d)
    return out


@st.composite
def document_query(draw):
    clauses = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["subject", "patient", "type", "date", "period", "status", "relationship",
                                     "description", "lastUpdated", "missing", "text"]))
        if kind == "subject":
            clauses.append(draw(st.sampled_from([
                ("subject", "Patient/p1"), ("subject", "p1"), ("subject:Patient", "p1"), ("subject", "p0,Group/g1"),
                ("subject:Practitioner", "p1"), ("subject:identifier", "urn:ins|1"), ("subject:identifier", "2"),
                ("subject:identifier", "|2")])))
        elif kind == "patient":
            clauses.append(("patient", draw(st.sampled_from(["p1", "Patient/p0", "p0,p1"]))))
        elif kind == "type":
            code = draw(st.sampled_from(LOINC))
            clauses.append(("type", draw(st.sampled_from([code, f"http://loinc.org|{code}", f"|{code}", "http://loinc.org|"]))))
        elif kind in ("date", "period", "lastUpdated"):
            prefix = draw(st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]))
            name = {"date": "date", "period": "period", "lastUpdated": "_lastUpdated"}[kind]
            clauses.append((name, prefix + draw(date_times)))
        elif kind == "status":
            clauses.append(("status", draw(st.sampled_from([
                "current", "http://hl7.org/fhir/document-reference-status|superseded", "|current", "x|current"]))))
        elif kind == "relationship":
            clauses.append(("relationship", f"DocumentReference/d{draw(st.integers(0, 3))}$" +
                            draw(st.sampled_from(["replaces", "appends"]))))
        elif kind == "description":
            clauses.append((draw(st.sampled_from(["description", "description:contains", "description:exact"])),
                            draw(st.sampled_from(["compte", "ECHO", "Échographie", "rendu", "ordonnance"]))))
        elif kind == "text":
            clauses.append(("type:text", draw(st.sampled_from(["compte", "LETTRE", "sortie", "courrier"]))))
        else:
            clauses.append((draw(st.sampled_from(["subject", "type", "date", "period", "relatesto"])) + ":missing",
                            draw(st.sampled_from(["true", "false"]))))
    return clauses


# --- property tests ------------------------------------------------------------------------------

@HYPOTHESIS
@given(data=st.data())
def test_patient_queries_match_oracle(db, data):
    corpus = data.draw(patients())
    load(db, corpus)
    for _ in range(4):
        check(db, corpus, "Patient", data.draw(patient_query(corpus)))


@HYPOTHESIS
@given(data=st.data())
def test_document_queries_match_oracle(db, data):
    corpus = data.draw(documents())
    load(db, corpus)
    for _ in range(4):
        check(db, corpus, "DocumentReference", data.draw(document_query()))


@st.composite
def dated_documents(draw):
    """Documents whose dates and periods straddle search boundaries: where the prefixes differ."""
    out = []
    for i in range(draw(st.integers(1, 8))):
        d = {"resourceType": "DocumentReference", "id": f"d{i}", "status": "current",
             "content": [{"attachment": {"contentType": "text/plain"}}],
             "meta": {"lastUpdated": draw(instants)}}
        if draw(st.booleans()):
            d["date"] = draw(instants)
        shape = draw(st.sampled_from(["start", "end", "both", "none"]))
        a, b = sorted([draw(date_times), draw(date_times)], key=lambda x: oracle.when(x)[0])
        period = {"start": a, "end": b} if shape == "both" else {shape: a} if shape != "none" else None
        if period:
            d["context"] = {"period": period}
        out.append(d)
    return out


@settings(HYPOTHESIS, max_examples=int(200 * SCALE))
@given(data=st.data())
def test_date_prefixes_match_oracle(db, data):
    corpus = data.draw(dated_documents())
    load(db, corpus)
    seen = [v for d in corpus for v in [d.get("date"), d["meta"]["lastUpdated"]]
            + list(d.get("context", {}).get("period", {}).values()) if v]
    def coarser(v):  # the same value at every coarser precision
        return st.sampled_from([v, v[:4], v[:7], v[:10], v[:16]])

    near = st.sampled_from(seen).flatmap(coarser) if seen else date_times
    for _ in range(6):
        prefix = data.draw(st.sampled_from(["", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]))
        value = data.draw(st.one_of(near, date_times)).rstrip("T")
        name = data.draw(st.sampled_from(["date", "period", "_lastUpdated"]))
        check(db, corpus, "DocumentReference", [(name, prefix + value)])


# Names from a wide alphabet (accents, ligatures, combining marks, blanks, hyphens), and queries
# that are prefixes of them of every length around MAX_PREFIX, typed in another case or without marks.
NAME_CHARS = st.sampled_from(list("abdeilnortuzABDELMNZ -'") + list("éÉèêëàçôöüßœŒæÅñ") + ["\u0301", "ﬁ"])
name_texts = st.text(NAME_CHARS, min_size=1, max_size=2 * MAX_PREFIX + 4).filter(lambda t: t.strip())


@st.composite
def prefix_query(draw, stored: list[str]):
    base = draw(st.sampled_from(stored)) if stored and draw(st.integers(0, 4)) else draw(name_texts)
    form = draw(st.sampled_from([base, base.upper(), base.lower(), oracle.insensitive(base)]))
    cut = draw(st.integers(1, len(form) + 1))
    return form[:cut] if form[:cut].strip() else form


@HYPOTHESIS
@given(data=st.data())
def test_string_prefix_search_matches_oracle(db, data):
    names = data.draw(st.lists(st.lists(name_texts, min_size=1, max_size=3), min_size=1, max_size=6))
    corpus = [{"resourceType": "Patient", "id": f"p{i}",
               "name": [{"family": n[0], **({"given": n[1:]} if n[1:] else {})}]} for i, n in enumerate(names)]
    load(db, corpus)
    stored = [s for n in names for s in n]
    for _ in range(4):
        code = data.draw(st.sampled_from(["family", "given", "name"]))
        alts = data.draw(st.lists(prefix_query(stored), min_size=1, max_size=2))
        check(db, corpus, "Patient", [(code, ",".join(a.replace("\\", "\\\\").replace(",", "\\,") for a in alts))])


# --- explicit cases ------------------------------------------------------------------------------

PEOPLE = [
    {"resourceType": "Patient", "id": "helene", "name": [{"family": "Dupont", "given": ["Hélène"]}],
     "birthDate": "1985-03-04", "gender": "female",
     "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "285037511100564"}]},
    {"resourceType": "Patient", "id": "jerome", "name": [{"family": "Lefèvre", "given": ["Jérôme"]}],
     "birthDate": "1985", "identifier": [{"value": "285037511100564"}], "active": True},
    {"resourceType": "Patient", "id": "noname", "birthDate": "1990-12-31", "gender": "male",
     "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "10001234567"}]},
    {"resourceType": "Patient", "id": "marie", "name": [{"family": "Dupond-Martin", "given": ["Marie", "Ève"]}],
     "birthDate": "1984-12"},
]


@pytest.fixture()
def people(db):
    load(db, PEOPLE)
    return PEOPLE


def ids(db, pairs, rtype="Patient"):
    got = check(db, PEOPLE if rtype == "Patient" else DOCS, rtype, pairs)
    return got


def test_accent_and_case_insensitive_strings(db, people):
    assert ids(db, [("name", "helene")]) == {"helene"}
    assert ids(db, [("given", "HELENE")]) == {"helene"}
    assert ids(db, [("family", "DUPONT")]) == {"helene"}
    assert ids(db, [("family", "dupon")]) == {"helene", "marie"}
    assert ids(db, [("family", "lefevre")]) == {"jerome"}
    assert ids(db, [("given", "eve")]) == {"marie"}


def test_exact_and_contains(db, people):
    assert ids(db, [("family:exact", "Dupont")]) == {"helene"}
    assert ids(db, [("family:exact", "dupont")]) == set()
    assert ids(db, [("given:exact", "Helene")]) == set()
    assert ids(db, [("given:exact", "Hélène")]) == {"helene"}
    assert ids(db, [("family:contains", "MARTIN")]) == {"marie"}
    assert ids(db, [("family:contains", "ont")]) == {"helene"}


def test_birthdate_precision(db, people):
    # 1985 = [1985-01-01, 1986-01-01): contains the day and the year itself, not December 1984
    assert ids(db, [("birthdate", "1985")]) == {"helene", "jerome"}
    assert ids(db, [("birthdate", "1985-03")]) == {"helene"}
    assert ids(db, [("birthdate", "1985-03-04")]) == {"helene"}
    assert ids(db, [("birthdate", "lt1985")]) == {"marie"}
    assert ids(db, [("birthdate", "ge1985")]) == {"helene", "jerome", "noname"}
    assert ids(db, [("birthdate", "sa1985")]) == {"noname"}
    assert ids(db, [("birthdate", "ne1985")]) == {"noname", "marie"}


def test_tokens(db, people):
    nir = "urn:oid:1.2.250.1.213.1.4.8"
    assert ids(db, [("identifier", "285037511100564")]) == {"helene", "jerome"}
    assert ids(db, [("identifier", f"{nir}|285037511100564")]) == {"helene"}
    assert ids(db, [("identifier", "|285037511100564")]) == {"jerome"}
    assert ids(db, [("identifier", f"{nir}|")]) == {"helene"}
    assert ids(db, [("gender", "http://hl7.org/fhir/administrative-gender|female")]) == {"helene"}
    assert ids(db, [("gender", "|female")]) == set()  # gender's system is implied, never "none"


def test_missing_and_not(db, people):
    assert ids(db, [("name:missing", "true")]) == {"noname"}
    assert ids(db, [("name:missing", "false")]) == {"helene", "jerome", "marie"}
    assert ids(db, [("gender:missing", "true")]) == {"jerome", "marie"}
    # :not also matches resources without any value (R4 search.html#token)
    assert ids(db, [("gender:not", "female")]) == {"jerome", "noname", "marie"}
    assert ids(db, [("active:not", "true")]) == {"helene", "noname", "marie"}


def test_or_and(db, people):
    assert ids(db, [("family", "dupont,lefevre")]) == {"helene", "jerome"}
    assert ids(db, [("family", "dupon"), ("given", "marie")]) == {"marie"}
    assert ids(db, [("birthdate", "ge1985"), ("birthdate", "lt1986")]) == {"helene", "jerome"}


def test_unsupported_modifier_and_malformed_values(db):
    for pairs in ([("name:sounds", "x")], [("identifier:in", "http://vs")], [("birthdate", "1985-13")],
                  [("birthdate", "yesterday")], [("birthdate", "xx1985")], [("gender:missing", "maybe")]):
        with pytest.raises(SearchError):
            parse("Patient", pairs)


DOCS = [
    {"resourceType": "DocumentReference", "id": "morning", "date": "2026-01-01T09:30:00Z",
     "subject": {"reference": "Patient/helene"},
     "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]}},
    {"resourceType": "DocumentReference", "id": "paris10", "date": "2026-01-01T10:00:00+01:00",
     "subject": {"reference": "Patient/helene"}},
    {"resourceType": "DocumentReference", "id": "ny", "date": "2026-01-01T04:30:00-05:00",
     "subject": {"reference": "Patient/jerome"}},
    {"resourceType": "DocumentReference", "id": "day", "date": "2026-01-01T10:00:00.250+01:00",
     "subject": {"reference": "Practitioner/x"}},
]


def test_date_prefix_grid(db):
    """Every prefix x precision x parameter against targets placed on and around the range bounds."""
    stamps = ["2026-01-01T09:59:59.999Z", "2026-01-01T10:00:00Z", "2026-01-01T10:00:00.999Z",
              "2026-01-01T10:00:01.000Z", "2026-01-01T11:00:00+01:00", "2026-01-01T05:00:00.5-05:00"]
    days = ["2025-12-31", "2026-01-01", "2026-01", "2026", "2026-01-02"]
    docs = []
    for i, stamp in enumerate(stamps):
        docs.append({"resourceType": "DocumentReference", "id": f"t{i}", "date": stamp,
                     "meta": {"lastUpdated": stamp}})
    for i, (a, b) in enumerate([(x, y) for x in [None] + days for y in [None] + days]):
        period = {k: v for k, v in (("start", a), ("end", b)) if v}
        if period and (not a or not b or oracle.when(a)[0] <= oracle.when(b)[0]):
            docs.append({"resourceType": "DocumentReference", "id": f"p{i}", "context": {"period": period},
                         "meta": {"lastUpdated": "2026-11-25T12:00:00Z"}})
    load(db, docs)
    values = ["2026", "2026-01", "2026-01-01", "2026-01-01T10:00", "2026-01-01T10:00:00Z",
              "2026-01-01T10:00:00.999Z", "2026-01-01T11:00:00+01:00"]
    for name in ("date", "_lastUpdated", "period"):
        for prefix in ("", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"):
            for value in values:
                check(db, docs, "DocumentReference", [(name, prefix + value)])


def test_dates_across_time_zones(db):
    load(db, DOCS + PEOPLE)
    # 10:00+01:00 == 09:00Z: 09:30Z and 04:30-05:00 (= 09:30Z) are after it, 10:00:00.250+01:00 inside it
    everything = {"morning", "paris10", "ny", "day"}
    assert ids(db, [("date", "ge2026-01-01T10:00:00+01:00")], "DocumentReference") == everything
    assert ids(db, [("date", "gt2026-01-01T10:00:00+01:00")], "DocumentReference") == {"morning", "ny"}
    assert ids(db, [("date", "2026-01-01T09:00:00Z")], "DocumentReference") == {"paris10", "day"}
    assert ids(db, [("date", "lt2026-01-01T09:00:01Z")], "DocumentReference") == {"paris10", "day"}
    assert ids(db, [("date", "2026-01-01T10:00:00.250+01:00")], "DocumentReference") == {"day"}
    # a '+' that was not URL-encoded arrives as a space
    assert ids(db, [("date", "ge2026-01-01T10:00:00 01:00")], "DocumentReference") == everything


def test_chain_and_has_resolution(db):
    load(db, DOCS + PEOPLE)

    async def find(rtype, flt, field):
        out = []
        for d in db[rtype].find(flt, {field: 1}):
            v = d.get(field)
            out.extend(v if isinstance(v, list) else [v] if v is not None else [])
        return out

    import asyncio

    def run(rtype, pairs):
        q = parse(rtype, pairs)
        resolved = asyncio.run(resolve(q, find, now=NOW))
        got = {d["_id"] for d in db[rtype].find(compile(q, resolved, now=NOW), {"_id": 1})}
        want = oracle_ids(DOCS + PEOPLE, rtype, pairs)
        assert got == want
        return got

    assert run("DocumentReference", [("subject:Patient.name", "hélène")]) == {"morning", "paris10"}
    assert run("DocumentReference", [("patient.identifier", "285037511100564")]) == {"morning", "paris10", "ny"}
    assert run("Patient", [("_has:DocumentReference:subject:date", "ge2026-01-01T09:30:00Z")]) == {"helene", "jerome"}
    assert run("Patient", [("_has:DocumentReference:patient:type", "http://loinc.org|11488-4")]) == {"helene"}


def test_sort_is_stable_with_id_tiebreak(db, people):
    q = parse("Patient", [("_sort", "-birthdate")])
    spec = sort_spec(q)
    assert spec[-1] == ("_id", 1)
    got = [d["_id"] for d in db.Patient.find(compile(q), {"_id": 1}).sort(spec)]
    assert got == ["noname", "helene", "jerome", "marie"]
