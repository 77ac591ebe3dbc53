"""Random sets of authorizations and blocks against an independent oracle (hypothesis).

Dr Org is a Practitioner with a PractitionerRole in Organization O, so a rule may name them, their
role, their organization, or someone else. The oracle restates the record's rules: among the
active rules in force now that cover the action and name the professional (any of their
identities), a deny wins; otherwise a permit allows; otherwise nothing does (the site default,
deny except break-glass, with no break-glass declared here).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dmp import authorization, document

FHIR = {"Content-Type": "application/fhir+json"}
PERIODS = {"none": (None, None), "past": ("2020-01-01", "2021-01-01"), "current": ("2020-01-01", "2099-01-01"),
           "future": ("2090-01-01", "2099-01-01")}
MINE = ("me", "my-role", "my-org")

rules = st.lists(st.fixed_dictionaries({
    "kind": st.sampled_from(["permit", "deny"]),
    "actor": st.sampled_from(["me", "my-role", "my-org", "someone-else"]),
    "actions": st.sampled_from([(), ("read",), ("add",), ("read", "add")]),
    "period": st.sampled_from(list(PERIODS)),
    "status": st.sampled_from(["active", "active", "inactive"]),
}), max_size=4)


def oracle(rs: list[dict], action: str) -> bool:
    live = [r for r in rs if r["status"] == "active" and r["period"] in ("none", "current")
            and (not r["actions"] or action in r["actions"]) and r["actor"] in MINE]
    if any(r["kind"] == "deny" for r in live):
        return False
    return any(r["kind"] == "permit" for r in live)


@pytest.fixture(scope="module")
def w(consent_world):
    return consent_world


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rs=rules)
def test_random_consents_match_the_oracle(w, rs):
    refs = {"me": w.pr("org"), "my-role": f"PractitionerRole/{w.role_org}", "my-org": f"Organization/{w.org_o}",
            "someone-else": w.pr("none")}
    pid, _ = w.fresh_patient(user=False)
    with w.client("operator") as op:
        doc = op.post("/DocumentReference", json=document(pid), headers=FHIR).json()["id"]
        for r in rs:
            start, end = PERIODS[r["period"]]
            consent = authorization(pid, [refs[r["actor"]]], kind=r["kind"], actions=r["actions"], start=start,
                                    end=end, status=r["status"])
            assert op.post("/Consent", json=consent, headers=FHIR).status_code == 201
    with w.client("org") as c:
        read = c.get(f"/DocumentReference/{doc}")
        assert (read.status_code == 200) == oracle(rs, "read"), (rs, read.text)
        found = c.get("/DocumentReference", params={"patient": pid, "_total": "accurate"}).json()
        assert (found["total"] == 1) == oracle(rs, "read") and found["total"] in (0, 1)
        added = c.post("/DocumentReference", json=document(pid), headers=FHIR)
        assert added.status_code == (201 if oracle(rs, "add") else 403), (rs, added.text)
