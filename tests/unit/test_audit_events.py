"""A disclosure too large for one AuditEvent (a copy or an export of a large record) is named in
several events of the same request and patient, each under the engine's document limit, none
left out (records/audit.py, MAX_ENTITIES)."""

from __future__ import annotations

import orjson

from fhir_server.auth.principal import Principal
from fhir_server.fhir import interactions as k
from fhir_server.fhir.interactions import Interaction
from fhir_server.records.audit import MAX_ENTITIES, _Seen, build_events
from fhir_server.records.hooks import Event


def test_a_large_disclosure_is_split_without_losing_a_resource():
    ix = Interaction(kind=k.OPERATION, method="GET", type="Patient", id="p1", operation="copy")
    seen = _Seen(Event(ix, Principal(kind="user", subject="u", fhir_user="Patient/p1"), "rid-1"))
    refs = {f"DocumentReference/d{i}/_history/1" for i in range(2 * MAX_ENTITIES + 7)}
    seen.refs.extend(("p1", r) for r in sorted(refs))
    seen.refs.append((None, "Practitioner/x/_history/1"))  # no one's: with the patient's events
    events = build_events(seen, 200, None, "fhir-server")
    assert len(events) == 3
    named: set[str] = set()
    for e in events:
        whats = [x["what"].get("reference") for x in e["entity"] if "what" in x]
        assert "Patient/p1" in whats  # each event names its patient
        assert any(x.get("what", {}).get("identifier", {}).get("value") == "rid-1" for x in e["entity"])
        named |= {w for w in whats if w and "/_history/" in w}
        assert len(orjson.dumps(e)) < 1 << 20
    assert named == refs | {"Practitioner/x/_history/1"}
    assert len({e["id"] for e in events}) == 3
