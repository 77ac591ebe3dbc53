"""The audit trail's batches are fair (records/trail.py): a request with few events (a read has
one) is never queued behind all the events of a large one (a refused 1000-entry Bundle has 1001),
and every batch makes progress. The rule is checked on the writer's choice of the next batch, for
any queue hypothesis draws; the whole trail is covered over HTTP by tests/test_audit*.py."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.records.trail import BATCH_EVENTS, SMALL_EVENTS, AuditTrail, _Pending


def _queue(sizes_written: list[tuple[int, int]]) -> list[_Pending]:
    loop = asyncio.new_event_loop()
    try:
        return [_Pending([{"id": f"{i}-{j}"} for j in range(size)], loop.create_future(), None, written)
                for i, (size, written) in enumerate(sizes_written)]
    finally:
        loop.close()


pending = st.integers(1, 3 * BATCH_EVENTS).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1)))


@settings(max_examples=300, deadline=None)
@given(st.lists(pending, min_size=1, max_size=12))
def test_small_requests_go_whole_and_large_ones_share_a_bounded_slice(sizes):
    trail = AuditTrail(repo=None)  # the choice touches no database
    trail._queue = _queue(sizes)
    batch = trail._next_batch()
    taken = {id(p): n for p, n in batch}
    assert len(taken) == len(batch), "a request appears once in a batch"
    left = {id(p): len(p.events) - p.written for p in trail._queue}
    for p in trail._queue:
        if left[id(p)] <= SMALL_EVENTS:
            assert taken.get(id(p)) == left[id(p)], "a small request goes whole into the next batch"
    large = [(p, taken.get(id(p), 0)) for p in trail._queue if left[id(p)] > SMALL_EVENTS]
    assert sum(n for _, n in large) <= BATCH_EVENTS
    assert all(0 <= n <= left[id(p)] for p, n in large)
    assert sum(taken.values()) > 0, "every batch writes something"
    if large:
        assert large[0][1] > 0, "the oldest large request progresses in every batch (no starvation)"
    # large requests are served in arrival order: once one is cut short, none after it gets any
    cut = False
    for p, n in large:
        if cut:
            assert n == 0
        cut = cut or n < left[id(p)]


def test_a_read_behind_a_thousand_event_bundle_goes_in_the_next_batch():
    trail = AuditTrail(repo=None)
    trail._queue = _queue([(1001, 0), (1, 0)])
    batch = trail._next_batch()
    assert [(len(p.events), n) for p, n in batch] == [(1, 1), (1001, BATCH_EVENTS - 1)]
