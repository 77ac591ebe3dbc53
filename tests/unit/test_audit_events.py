"""How interactions become AuditEvents (records/audit.py): a disclosure too large for one
AuditEvent (a copy or an export of a large record) is named in several events of the same request
and patient, each under the engine's document limit, none left out (MAX_ENTITIES); a Bundle's
entries refused alike fold into one event that counts them (_fold_key)."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.auth.principal import Principal
from fhir_server.fhir import interactions as k
from fhir_server.fhir.interactions import Interaction
from fhir_server.fhir.outcome import FhirError
from fhir_server.records.audit import MAX_ENTITIES, AuditHook, _Seen, build_events
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


# --- refused Bundle entries fold (records/audit.py, _fold_key) --------------------------------


_ENTRY = st.fixed_dictionaries({
    "kind": st.sampled_from([k.READ, k.CREATE, k.DELETE]),
    "type": st.sampled_from(["Observation", "DocumentReference"]),
    "id": st.sampled_from(["a", "b", "c"]),
    "status": st.sampled_from([200, 403, 404]),
    "why": st.sampled_from(["no consent", "not permitted"]),
    "patient": st.sampled_from([None, "p1", "p2"]),
})


class _Trail:
    def __init__(self) -> None:
        self.stored: list[dict] = []

    async def store(self, events) -> None:
        self.stored.extend(events)


def _count(event: dict) -> int:
    head, sep, _ = event.get("outcomeDesc", "").partition(" Bundle entries refused alike: ")
    return int(head) if sep else 1


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(_ENTRY, max_size=12))
def test_refused_entries_fold_without_losing_or_merging_what_differs(entries):
    """Every refused entry is counted in exactly one event, which names its resource (a create, the
    type it would have been) and its patient and says why it was refused; entries that succeed keep
    events of their own; two refusals that differ in interaction, type, reason or patient are
    never in one event."""
    trail = _Trail()
    hook = AuditHook(trail)  # type: ignore[arg-type]
    principal = Principal(kind="user", subject="u", fhir_user="Practitioner/x")

    async def request() -> None:
        bundle = Event(Interaction(kind=k.BUNDLE, method="POST"), principal, "rid")
        await hook.started(bundle)
        for e in entries:
            ix = Interaction(kind=e["kind"], method="GET", type=e["type"],
                             id=None if e["kind"] == k.CREATE else e["id"])
            event = Event(ix, principal, "rid")
            await hook.started(event)
            if e["patient"] is not None:
                await hook.concerned(event, {e["patient"]})
            error = FhirError(e["status"], "forbidden", e["why"]) if e["status"] >= 400 else None
            await hook.finished(event, e["status"], error)
        await hook.finished(bundle, 200, None)

    asyncio.run(request())
    refused = [e for e in entries if e["status"] >= 400]
    events = [e for e in trail.stored if e["subtype"][0]["code"] != "transaction"]
    failed = [e for e in events if e["outcome"] == "4"]
    assert sum(_count(e) for e in failed) == len(refused)
    assert len([e for e in events if e["outcome"] == "0"]) == len(entries) - len(refused)
    action = {k.READ: "R", k.CREATE: "C", k.DELETE: "D"}
    groups = Counter((action[r["kind"]], r["type"], r["status"], r["why"], r["patient"]) for r in refused)
    told: dict[tuple, list[int]] = {}
    for e in failed:
        patients = [x["what"]["reference"][8:] for x in e["entity"]
                    if x.get("what", {}).get("reference", "").startswith("Patient/")]
        assert len(patients) <= 1  # BALP: one patient per event
        key = (e["action"], e["outcomeDesc"].rpartition(": ")[2], patients[0] if patients else None)
        told.setdefault(key, []).append(_count(e))
    expected: dict[tuple, list[int]] = {}
    for (act, _, _, why, patient), n in groups.items():
        expected.setdefault((act, why, patient), []).append(n)
    # one event per kind of refusal, counting all of its entries: none merged with another, none split
    assert {key: sorted(v) for key, v in told.items()} == {key: sorted(v) for key, v in expected.items()}
    for r in refused:
        holding = [e for e in failed if e["outcomeDesc"].endswith(r["why"])
                   and ({"Patient/" + r["patient"]} if r["patient"] else set()) ==
                   {x["what"]["reference"] for x in e["entity"]
                    if x.get("what", {}).get("reference", "").startswith("Patient/")}
                   and e["action"] == action[r["kind"]]
                   and ({"type": r["type"]} if r["kind"] == k.CREATE else {"reference": f"{r['type']}/{r['id']}"})
                   in [x["what"] for x in e["entity"] if "what" in x]]
        assert holding, r
